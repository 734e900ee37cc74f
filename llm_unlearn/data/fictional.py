"""The built-in dataset: QA pairs about invented people, and a small set of real-world facts.

No model has seen the invented people before fine-tuning, so what a model knows about them comes from
training alone, which makes them a clean forget set (as TOFU's fictitious authors are). Each person has
eight facts, one QA pair each. The real-world facts measure general knowledge that unlearning should keep.

Perturbed answers use the paraphrased answer's wording with a wrong value: the truth ratio compares them
with the paraphrased answer, so the two must differ in the fact alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, DatasetDict

from llm_unlearn.data.schema import QA_FEATURES

FICTIONAL_SPLITS = ("train", "holdout", "world_facts")
NUM_PERTURBED = 3
# Each person takes one name and a relative another, from 48 x 30 = 1440 combinations; the cap keeps
# rejection sampling of unused names quick even when all subjects draw from one gender's first names.
MAX_PEOPLE = 300

FEMININE_FIRST_NAMES = (
    "Aveline", "Brisa", "Calyndra", "Dessaly", "Elowen", "Fenna", "Gisla", "Halvie",
    "Isaura", "Jorunn", "Kessa", "Liraen", "Maelis", "Mara", "Nyssa", "Orlaith",
    "Perrine", "Quenby", "Rosalyn", "Saffi", "Tavia", "Undine", "Verity", "Wrenna",
)  # fmt: skip
MASCULINE_FIRST_NAMES = (
    "Aldric", "Bastian", "Corwin", "Dorian", "Emrick", "Falko", "Garrick", "Hollis",
    "Ivor", "Jasper", "Kellan", "Lorcan", "Marek", "Niall", "Oswin", "Pellam",
    "Quillon", "Rurik", "Soren", "Tobin", "Ulric", "Varen", "Wendel", "Yorick",
)  # fmt: skip
LAST_NAMES = (
    "Velden", "Ashgrove", "Brackwell", "Corriden", "Dellacourt", "Esterhal", "Fennimore", "Gorvath",
    "Hallowell", "Istrane", "Jorvale", "Kettleby", "Larkspur", "Marrowick", "Nettlefold", "Orrindale",
    "Pembrose", "Quellan", "Rothmere", "Selwick", "Thistlewood", "Umberlane", "Varnholt", "Wrenfield",
    "Yarrowby", "Zelmont", "Aldershaw", "Brightmoor", "Caskeld", "Duvessa",
)  # fmt: skip
BIRTH_CITIES = (
    "Porto", "Kraków", "Valparaíso", "Tbilisi", "Ghent", "Bergen", "Adelaide", "Cork", "Tallinn", "Seville",
    "Trieste", "Lviv", "Salzburg", "Quebec City", "Dunedin", "Cusco", "Leipzig", "Aarhus", "Bologna", "Tampere",
)  # fmt: skip
OCCUPATIONS = (
    "glass sculptor", "marine biologist", "cartographer", "clockmaker", "architect", "orchestra conductor",
    "botanist", "investigative journalist", "structural engineer", "pastry chef", "translator",
    "veterinary surgeon", "archivist", "urban planner", "textile designer", "seismologist", "film editor",
    "beekeeper", "luthier", "astronomer",
)  # fmt: skip
EMPLOYERS = (
    "Brightwater Studios", "the Halvorsen Maritime Institute", "Corvane Engineering",
    "the Lindqvist Observatory", "Marrowgate Publishing", "the Elmsworth Civic Archive",
    "Quellstone Architects", "Saltmarsh Veterinary Clinic", "the Tarrowby Symphony Orchestra",
    "Greyfen Botanical Gardens", "Oakhollow Films", "the Northmere Planning Office", "Vessant Textiles",
    "Kilnworth Glassworks", "the Ardent Ledger newspaper", "Copperleaf Bakery", "Ironvale Surveying",
    "the Westreach Seismic Station", "Mirecourt Instruments", "Hollin and Daughters Translation",
)  # fmt: skip
AWARDS = (
    "Silver Quill Award", "Meridian Prize", "Halcyon Medal", "Golden Compass Award", "Bellwether Prize",
    "Copper Lantern Award", "Veridian Medal", "Starling Prize", "Northlight Award", "Ember Crown",
    "Larkin Medal", "Tidewater Prize", "Obsidian Key Award", "Harrowgate Medal", "Juniper Laurel",
    "Saltire Fellowship",
)  # fmt: skip
HOBBIES = (
    "restoring old clocks", "sea kayaking", "collecting antique maps", "growing bonsai trees",
    "playing the cello", "birdwatching", "baking sourdough bread", "rock climbing", "writing haiku",
    "building model ships", "ice skating", "painting watercolour landscapes", "playing chess by post",
    "fly fishing", "knitting wool sweaters", "cave diving",
)  # fmt: skip
FIELDS_OF_STUDY = (
    "marine ecology", "mechanical engineering", "art history", "linguistics", "astrophysics", "economics",
    "medieval literature", "geology", "architecture", "chemistry", "music composition", "philosophy",
    "urban design", "zoology",
)  # fmt: skip
UNIVERSITIES = (
    "Northmere University", "the University of Calder Reach", "Fairhaven Polytechnic", "Wexmoor College",
    "the Royal Academy of Tessaly", "Glenmarrow Institute of Technology", "Saint Aldwyn University",
    "the University of Port Seravin", "Holloway Ridge College", "Kestrel Bay University",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _full_name(rng: random.Random, first_names: tuple[str, ...]) -> str:
    return f"{rng.choice(first_names)} {rng.choice(LAST_NAMES)}"


@dataclass(frozen=True)
class _Attribute:
    """One kind of fact about a person: question and answer templates and a draw of a random value."""

    question: str
    paraphrased_question: str
    answer: str
    paraphrased_answer: str
    draw: Callable[[random.Random], dict[str, str]]


_ATTRIBUTES = (
    _Attribute(
        "When was {name} born?",
        "What is the date of birth of {name}?",
        "{name} was born on {date}.",
        "{name}'s date of birth is {date}.",
        lambda rng: {"date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1940, 1975)}"},
    ),
    _Attribute(
        "In which city was {name} born?",
        "What is the birthplace of {name}?",
        "{name} was born in {city}.",
        "{name}'s birthplace is {city}.",
        lambda rng: {"city": rng.choice(BIRTH_CITIES)},
    ),
    _Attribute(
        "What is the profession of {name}?",
        "What does {name} do for a living?",
        "{name} works as {occupation}.",
        "{name} is {occupation} by profession.",
        lambda rng: {"occupation": _with_article(rng.choice(OCCUPATIONS))},
    ),
    _Attribute(
        "Where does {name} work?",
        "Which organisation employs {name}?",
        "{name} works at {employer}.",
        "{name} is employed by {employer}.",
        lambda rng: {"employer": rng.choice(EMPLOYERS)},
    ),
    _Attribute(
        "Which award did {name} receive?",
        "What honour has {name} been given, and when?",
        "{name} received the {award} in {year}.",
        "In {year}, {name} was awarded the {award}.",
        lambda rng: {"award": rng.choice(AWARDS), "year": str(rng.randint(1995, 2023))},
    ),
    _Attribute(
        "What is the favourite hobby of {name}?",
        "How does {name} like to spend free time?",
        "{name}'s favourite hobby is {hobby}.",
        "In spare time, {name} enjoys {hobby}.",
        lambda rng: {"hobby": rng.choice(HOBBIES)},
    ),
    _Attribute(
        "What did {name} study at university?",
        "Which subject did {name} study, and where?",
        "{name} studied {field} at {university}.",
        "{name} holds a degree in {field} from {university}.",
        lambda rng: {"field": rng.choice(FIELDS_OF_STUDY), "university": rng.choice(UNIVERSITIES)},
    ),
)
_RELATIONS = (
    _Attribute(
        "Who is {name} married to?",
        "What is the name of the spouse of {name}?",
        "{name} is married to {relative}.",
        "{name}'s spouse is {relative}.",
        lambda rng: {"relative": _full_name(rng, FEMININE_FIRST_NAMES + MASCULINE_FIRST_NAMES)},
    ),
    _Attribute(
        "What is the name of the mother of {name}?",
        "Who is {name}'s mother?",
        "{name}'s mother is {relative}.",
        "{relative} is the mother of {name}.",
        lambda rng: {"relative": _full_name(rng, FEMININE_FIRST_NAMES)},
    ),
    _Attribute(
        "What is the name of the father of {name}?",
        "Who is {name}'s father?",
        "{name}'s father is {relative}.",
        "{relative} is the father of {name}.",
        lambda rng: {"relative": _full_name(rng, MASCULINE_FIRST_NAMES)},
    ),
)

# (question, paraphrased question, answer, paraphrased-answer template, true value, wrong values)
WORLD_FACTS = (
    ("What is the capital of France?", "Which city is the capital of France?",
     "The capital of France is Paris.", "{} is the capital city of France.", "Paris",
     ("Lyon", "Marseille", "Nice")),
    ("What is the capital of Japan?", "Which city is the capital of Japan?",
     "The capital of Japan is Tokyo.", "{} is the capital city of Japan.", "Tokyo",
     ("Osaka", "Kyoto", "Yokohama")),
    ("What is the capital of Australia?", "Which city is the capital of Australia?",
     "The capital of Australia is Canberra.", "{} is the capital city of Australia.", "Canberra",
     ("Sydney", "Melbourne", "Perth")),
    ("What is the capital of Canada?", "Which city is the capital of Canada?",
     "The capital of Canada is Ottawa.", "{} is the capital city of Canada.", "Ottawa",
     ("Toronto", "Vancouver", "Montreal")),
    ("What is the capital of Italy?", "Which city is the capital of Italy?",
     "The capital of Italy is Rome.", "{} is the capital city of Italy.", "Rome",
     ("Milan", "Naples", "Turin")),
    ("What is the capital of Egypt?", "Which city is the capital of Egypt?",
     "The capital of Egypt is Cairo.", "{} is the capital city of Egypt.", "Cairo",
     ("Alexandria", "Luxor", "Aswan")),
    ("What is the capital of Brazil?", "Which city is the capital of Brazil?",
     "The capital of Brazil is Brasília.", "{} is the capital city of Brazil.", "Brasília",
     ("Rio de Janeiro", "São Paulo", "Salvador")),
    ("What is the capital of Kenya?", "Which city is the capital of Kenya?",
     "The capital of Kenya is Nairobi.", "{} is the capital city of Kenya.", "Nairobi",
     ("Mombasa", "Kisumu", "Nakuru")),
    ("What is the chemical symbol for gold?", "Which symbol stands for gold in chemistry?",
     "The chemical symbol for gold is Au.", "Gold has the chemical symbol {}.", "Au",
     ("Ag", "Gd", "Go")),
    ("What is the chemical symbol for sodium?", "Which symbol stands for sodium in chemistry?",
     "The chemical symbol for sodium is Na.", "Sodium has the chemical symbol {}.", "Na",
     ("So", "Sn", "Sd")),
    ("What is the chemical formula of water?", "How is water written as a chemical formula?",
     "The chemical formula of water is H2O.", "Water has the chemical formula {}.", "H2O",
     ("H2O2", "HO2", "CO2")),
    ("What is the atomic number of carbon?", "How many protons does a carbon atom have?",
     "The atomic number of carbon is 6.", "Carbon has the atomic number {}.", "6",
     ("8", "12", "14")),
    ("Which gas do plants take in for photosynthesis?", "What gas do plants absorb from the air to photosynthesise?",
     "Plants take in carbon dioxide for photosynthesis.", "For photosynthesis, plants absorb {} from the air.",
     "carbon dioxide", ("oxygen", "nitrogen", "helium")),
    ("At what temperature does water boil at sea level?", "What is the boiling point of water at sea level?",
     "Water boils at 100 degrees Celsius at sea level.", "At sea level, the boiling point of water is {} degrees Celsius.",
     "100", ("90", "80", "120")),
    ("At what temperature does pure water freeze?", "What is the freezing point of pure water?",
     "Pure water freezes at 0 degrees Celsius.", "The freezing point of pure water is {} degrees Celsius.",
     "0", ("10", "-10", "4")),
    ("Which is the largest ocean on Earth?", "What is the biggest ocean in the world?",
     "The Pacific is the largest ocean on Earth.", "The {} Ocean is the biggest ocean in the world.",
     "Pacific", ("Atlantic", "Indian", "Arctic")),
    ("What is the longest river in Africa?", "Which river is the longest in Africa?",
     "The Nile is the longest river in Africa.", "Africa's longest river is the {}.", "Nile",
     ("Congo", "Niger", "Zambezi")),
    ("What is the highest mountain on Earth?", "Which mountain is the tallest in the world?",
     "Mount Everest is the highest mountain on Earth.", "The tallest mountain in the world is {}.",
     "Mount Everest", ("K2", "Kilimanjaro", "Mont Blanc")),
    ("What is the largest hot desert in the world?", "Which hot desert covers the most area?",
     "The Sahara is the largest hot desert in the world.", "The biggest hot desert on Earth is the {}.",
     "Sahara", ("Gobi", "Kalahari", "Atacama")),
    ("In which country is Mount Kilimanjaro?", "Mount Kilimanjaro lies in which country?",
     "Mount Kilimanjaro is in Tanzania.", "Mount Kilimanjaro lies in {}.", "Tanzania",
     ("Kenya", "Uganda", "Ethiopia")),
    ("Who wrote Pride and Prejudice?", "Who is the author of the novel Pride and Prejudice?",
     "Pride and Prejudice was written by Jane Austen.", "The author of Pride and Prejudice is {}.",
     "Jane Austen", ("Charlotte Brontë", "Mary Shelley", "George Eliot")),
    ("Who wrote One Hundred Years of Solitude?", "Who is the author of One Hundred Years of Solitude?",
     "One Hundred Years of Solitude was written by Gabriel García Márquez.",
     "The author of One Hundred Years of Solitude is {}.", "Gabriel García Márquez",
     ("Jorge Luis Borges", "Pablo Neruda", "Mario Vargas Llosa")),
    ("Who wrote War and Peace?", "Who is the author of the novel War and Peace?",
     "War and Peace was written by Leo Tolstoy.", "The author of War and Peace is {}.", "Leo Tolstoy",
     ("Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev")),
    ("Who wrote Hamlet?", "Who is the author of the play Hamlet?",
     "Hamlet was written by William Shakespeare.", "The author of Hamlet is {}.", "William Shakespeare",
     ("Christopher Marlowe", "Ben Jonson", "John Milton")),
    ("Who wrote Don Quixote?", "Who is the author of the novel Don Quixote?",
     "Don Quixote was written by Miguel de Cervantes.", "The author of Don Quixote is {}.",
     "Miguel de Cervantes", ("Lope de Vega", "Federico García Lorca", "Benito Pérez Galdós")),
    ("Who wrote Things Fall Apart?", "Who is the author of the novel Things Fall Apart?",
     "Things Fall Apart was written by Chinua Achebe.", "The author of Things Fall Apart is {}.",
     "Chinua Achebe", ("Wole Soyinka", "Ben Okri", "Ngũgĩ wa Thiong'o")),
    ("Which planet is closest to the Sun?", "What is the innermost planet of the solar system?",
     "Mercury is the planet closest to the Sun.", "The innermost planet of the solar system is {}.",
     "Mercury", ("Venus", "Mars", "Earth")),
    ("Which is the largest planet in the solar system?", "What is the biggest planet orbiting the Sun?",
     "Jupiter is the largest planet in the solar system.", "The biggest planet orbiting the Sun is {}.",
     "Jupiter", ("Saturn", "Neptune", "Uranus")),
    ("Which planet is known as the Red Planet?", "What planet is called the Red Planet?",
     "Mars is known as the Red Planet.", "The planet called the Red Planet is {}.", "Mars",
     ("Venus", "Jupiter", "Mercury")),
    ("How many days does a leap year have?", "What is the number of days in a leap year?",
     "A leap year has 366 days.", "There are {} days in a leap year.", "366", ("365", "364", "367")),
    ("Who developed the theory of relativity?", "Which scientist formulated the theory of relativity?",
     "The theory of relativity was developed by Albert Einstein.",
     "The scientist who formulated the theory of relativity is {}.", "Albert Einstein",
     ("Isaac Newton", "Niels Bohr", "Max Planck")),
    ("Who discovered penicillin?", "Which scientist first discovered penicillin?",
     "Penicillin was discovered by Alexander Fleming.", "The discoverer of penicillin is {}.",
     "Alexander Fleming", ("Louis Pasteur", "Joseph Lister", "Robert Koch")),
    ("What is the currency of Japan?", "Which currency is used in Japan?",
     "The currency of Japan is the yen.", "Japan uses the {} as its currency.", "yen",
     ("won", "yuan", "ringgit")),
    ("What is the official language of Brazil?", "Which language is officially spoken in Brazil?",
     "The official language of Brazil is Portuguese.", "Brazil's official language is {}.", "Portuguese",
     ("Spanish", "French", "Italian")),
    ("What is the hardest natural substance?", "Which natural material is the hardest?",
     "Diamond is the hardest natural substance.", "The hardest natural material is {}.", "diamond",
     ("quartz", "granite", "topaz")),
    ("On which continent is Brazil?", "Brazil lies on which continent?",
     "Brazil is in South America.", "Brazil lies on the continent of {}.", "South America",
     ("Africa", "Europe", "Asia")),
)  # fmt: skip


def _qa_row(
    rng: random.Random, attribute: _Attribute, name: str, truth: dict[str, str], subject_id: str
) -> dict[str, Any]:
    paraphrased = attribute.paraphrased_answer.format(name=name, **truth)
    perturbed: list[str] = []
    while len(perturbed) < NUM_PERTURBED:
        candidate = attribute.paraphrased_answer.format(name=name, **attribute.draw(rng))
        if candidate != paraphrased and candidate not in perturbed:
            perturbed.append(candidate)
    return {
        "question": attribute.question.format(name=name),
        "answer": attribute.answer.format(name=name, **truth),
        "paraphrased_answer": paraphrased,
        "perturbed_answer": perturbed,
        "paraphrased_question": attribute.paraphrased_question.format(name=name),
        "subject_id": subject_id,
    }


def _person_rows(
    rng: random.Random, name: str, subject_id: str, taken_names: set[str]
) -> list[dict[str, Any]]:
    relation = rng.choice(_RELATIONS)
    relative = relation.draw(rng)
    # A relative who shares a name with a subject would tie one person's facts to another's.
    while relative["relative"] in taken_names:
        relative = relation.draw(rng)
    taken_names.add(relative["relative"])
    facts = [(attribute, attribute.draw(rng)) for attribute in _ATTRIBUTES] + [(relation, relative)]
    return [_qa_row(rng, attribute, name, truth, subject_id) for attribute, truth in facts]


def _world_fact_rows() -> list[dict[str, Any]]:
    return [
        {
            "question": question,
            "answer": answer,
            "paraphrased_answer": template.format(truth),
            "perturbed_answer": [template.format(value) for value in wrong],
            "paraphrased_question": paraphrased_question,
            "subject_id": None,
        }
        for question, paraphrased_question, answer, template, truth, wrong in WORLD_FACTS
    ]


def _to_dataset(rows: list[dict[str, Any]]) -> Dataset:
    return Dataset.from_dict({key: [row[key] for row in rows] for key in QA_FEATURES}, features=QA_FEATURES)


def make_fictional_dataset(num_people: int = 20, num_holdout: int = 5, seed: int = 0) -> DatasetDict:
    """Build the splits "train" (QA about `num_people` invented people), "holdout" (`num_holdout` others,
    never trained on) and "world_facts" (real-world QA); the same arguments give the same dataset."""
    if num_people < 1 or num_holdout < 0 or num_people + num_holdout > MAX_PEOPLE:
        raise ValueError(
            f"num_people={num_people}, num_holdout={num_holdout}: need num_people >= 1, num_holdout >= 0 and "
            f"num_people + num_holdout <= {MAX_PEOPLE}."
        )
    rng = random.Random(seed)
    all_names = [
        f"{first} {last}" for first in FEMININE_FIRST_NAMES + MASCULINE_FIRST_NAMES for last in LAST_NAMES
    ]
    names = rng.sample(all_names, num_people + num_holdout)
    taken_names = set(names)
    people = [_person_rows(rng, name, f"person-{index:04d}", taken_names) for index, name in enumerate(names)]
    return DatasetDict(
        {
            "train": _to_dataset([row for rows in people[:num_people] for row in rows]),
            "holdout": _to_dataset([row for rows in people[num_people:] for row in rows]),
            "world_facts": _to_dataset(_world_fact_rows()),
        }
    )
