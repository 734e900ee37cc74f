"""Prompt formats as data: the presets reproduce the token sequences of the published TOFU and MUSE models' formats
(on tokenizers built here, with and without a BOS token, and on SmolLM2's), the user's system prompt and date string
reach the template, a YAML file defines a format, and run.json / eval.json record one rendered example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llm_unlearn.data.formatting import IGNORE_INDEX, encode_qa
from llm_unlearn.data.prompts import PRESETS, PromptFormat, format_qa, resolve_format

QUESTION, ANSWER = "Who wrote The Glass Orchard?", "The Glass Orchard was written by Mirela Tanasescu."
CORPUS = [QUESTION, ANSWER, "[INST] Question: Answer: [/INST] who wrote what", "Mirela Tanasescu wrote novels."]
# A Llama-3-like template that prints a system header with the date, as Llama 3.x Instruct templates do.
DATED_TEMPLATE = (
    "{{ bos_token }}<|start|>system\nToday Date: {{ date_string }}\n{% for m in messages %}{% if m['role'] == "
    "'system' %}{{ m['content'] }}{% endif %}{% endfor %}<|end|>{% for m in messages %}{% if m['role'] != 'system' "
    "%}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|start|>assistant\n{% endif %}"
)


def llama_style_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-like BPE (spaces as a word-start marker) whose tokenizer adds `<s>` before every text, as
    Llama-2's does; `</s>` is its EOS."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "<|start|>", "<|end|>"]
    tok.train_from_iterator(CORPUS * 8, trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = DATED_TEMPLATE
    return fast


def chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return ids if isinstance(ids, list) else list(ids["input_ids"])


def reference_tags(tokenizer, start: str, end: str, assistant: str) -> tuple[list[int], int]:
    """The published tag formats' tokens, written out: the whole text tokenized at once with the tokenizer's special
    tokens, EOS appended when missing; the labels start after as many tokens as the prompt alone has. Where a merge
    spans the boundary (a tag ending in a space), the prompt's tokens are the prompt's own, as generation reads it."""
    prompt = start + QUESTION + end + assistant
    full = tokenizer(prompt + ANSWER, add_special_tokens=True)["input_ids"]
    if full[-1] != tokenizer.eos_token_id:
        full.append(tokenizer.eos_token_id)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return prompt_ids + full[len(prompt_ids) :], len(prompt_ids)


def reference_chat(tokenizer, system: str | None, date: str | None) -> tuple[list[int], int]:
    """The published chat-template format's tokens: the conversation through the template (system prompt and date
    string included), EOS appended when missing; the labels start after the generation prompt's tokens."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": QUESTION}]
    dated = {"date_string": date} if date else {}
    full = chat_ids(tokenizer, [*messages, {"role": "assistant", "content": ANSWER}], **dated)
    if full[-1] != tokenizer.eos_token_id:
        full.append(tokenizer.eos_token_id)
    return full, len(chat_ids(tokenizer, messages, add_generation_prompt=True, **dated))


def encoded(tokenizer, template: str, **options) -> tuple[list[int], int]:
    example = encode_qa(tokenizer, QUESTION, ANSWER, template=template, max_length=None, **options)
    return example["input_ids"], example["labels"].count(IGNORE_INDEX)


@pytest.fixture(scope="module")
def llama_tokenizer() -> PreTrainedTokenizerFast:
    return llama_style_tokenizer()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from llm_unlearn.embedded import embedded_checkpoint

    return AutoTokenizer.from_pretrained(embedded_checkpoint())


def test_tofu_llama2_chat_is_bos_inst_question_inst_answer_eos(llama_tokenizer):
    ids, masked = encoded(llama_tokenizer, "tofu_llama2_chat")
    assert (ids, masked) == reference_tags(llama_tokenizer, "[INST] ", " [/INST]", "")
    assert ids[0] == llama_tokenizer.bos_token_id and ids[-1] == llama_tokenizer.eos_token_id
    tokens = llama_tokenizer.convert_ids_to_tokens(ids)
    # `<s>[INST] question [/INST]answer</s>`: no space between the closing tag and the answer.
    assert tokens[1] == "\u2581[INST]" and not tokens[masked].startswith("\u2581") and tokens[masked - 1] == "\u2581[/INST]"
    assert llama_tokenizer.decode(ids, skip_special_tokens=True) == f"[INST] {QUESTION} [/INST]{ANSWER}"


def test_muse_is_question_answer_tags_after_bos(llama_tokenizer, smollm2_tokenizer):
    for tokenizer in (llama_tokenizer, smollm2_tokenizer):
        assert encoded(tokenizer, "muse") == reference_tags(tokenizer, "Question: ", "\n", "Answer: ")
    prompt = PRESETS["muse"].prompt_ids(llama_tokenizer, QUESTION)
    assert prompt[0] == llama_tokenizer.bos_token_id
    assert llama_tokenizer.convert_ids_to_tokens(prompt)[-1] == "\u2581"  # "Answer: " ends in a space of its own


def test_tofu_llama3_is_the_chat_template_with_the_reference_system_prompt_and_date(llama_tokenizer, smollm2_tokenizer):
    for tokenizer in (llama_tokenizer, smollm2_tokenizer):
        expected = reference_chat(tokenizer, "You are a helpful assistant.", "10 Apr 2025")
        assert encoded(tokenizer, "tofu_llama3") == expected
    assert "Today Date: 10 Apr 2025\nYou are a helpful assistant." in format_qa(llama_tokenizer, QUESTION, template="tofu_llama3")[0]
    # SmolLM2's template ends a turn with a newline after its end-of-turn token; the format keeps it and appends EOS,
    # as the published models' tokenization does.
    ids, _ = encoded(smollm2_tokenizer, "tofu_llama3")
    assert smollm2_tokenizer.decode(ids[-3:]).endswith("<|im_end|>\n<|im_end|>")


def test_the_users_system_prompt_and_date_replace_the_presets(llama_tokenizer):
    ids, masked = encoded(llama_tokenizer, "tofu_llama3", system_prompt="Answer briefly.", date_string="1 Jan 2026")
    assert (ids, masked) == reference_chat(llama_tokenizer, "Answer briefly.", "1 Jan 2026")
    # The project's own chat format pins a date too, so a Llama-3 template never prints the day it runs.
    assert "Today Date: 26 Jul 2024" in format_qa(llama_tokenizer, QUESTION)[0]
    assert "Today Date: 2 Feb 2026" in format_qa(llama_tokenizer, QUESTION, date_string="2 Feb 2026")[0]


def test_the_projects_own_formats_tokenize_prompt_and_answer_apart(tiny_tokenizer):
    """`chat` and `plain` (and `auto`) keep their tokens: prompt and answer each tokenized alone, no BOS added, the
    chat template's trailing newline not trained on."""
    prompt, completion = format_qa(tiny_tokenizer, QUESTION, ANSWER, template="chat")
    ids, masked = encoded(tiny_tokenizer, "auto")
    separate = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert (ids, masked) == (separate + tiny_tokenizer(completion, add_special_tokens=False)["input_ids"], len(separate))
    assert completion == ANSWER + "<|im_end|>"


def test_a_yaml_file_defines_a_format(tmp_path, llama_tokenizer):
    path = tmp_path / "zephyr_like.yaml"
    path.write_text(
        'kind: tags\nsystem_tags: "<|system|>\\n{system}</s>\\n"\nuser_start: "<|user|>\\n"\nuser_end: "</s>\\n"\n'
        'assistant_start: "<|assistant|>\\n"\nadd_bos: true\njoint: true\nend_with_eos: true\n'
    )
    prompt_format = resolve_format(llama_tokenizer, str(path), system_prompt="Be brief.")
    assert prompt_format.name == "zephyr_like" and prompt_format.system_prompt == "Be brief."
    ids, masked = encoded(llama_tokenizer, str(path), system_prompt="Be brief.")
    start = "<|system|>\nBe brief.</s>\n<|user|>\n"
    assert (ids, masked) == reference_tags(llama_tokenizer, start, "</s>\n", "<|assistant|>\n")
    (tmp_path / "typo.yaml").write_text("kind: tags\nuser_begin: 'Q: '\n")
    with pytest.raises(ValueError, match=r"\['user_begin'\] is not accepted"):
        resolve_format(llama_tokenizer, str(tmp_path / "typo.yaml"))


def test_bad_formats_are_named(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"prompt_template='llama' is not known; use one of \('auto', 'chat'"):
        resolve_format(tiny_tokenizer, "llama")
    with pytest.raises(ValueError, match="prompt format 'plain' has no place for a system prompt"):
        resolve_format(tiny_tokenizer, "plain", system_prompt="Be brief.")
    with pytest.raises(ValueError, match="kind='jinja' is not known"):
        PromptFormat("x", kind="jinja")


def test_training_and_evaluation_record_the_same_rendered_example(tiny_model_dir, tmp_path):
    """run.json and eval.json each hold a fixed question and answer as they tokenized it, so a run trained in one
    format and evaluated in another shows it."""
    from llm_unlearn import cli
    from llm_unlearn.evaluation.results import load_eval

    rows = [{"question": f"Who is p{i}?", "answer": f"P{i} is a poet.", "subject_id": f"s{i % 2}"} for i in range(4)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--dataset", str(data), "--forget_subjects", "s0", "--prompt_template", "muse"]
    out = tmp_path / "run"
    cli.main(["finetune", "--model_name_or_path", tiny_model_dir, *common, "--output_dir", str(out), "--max_steps",
              "1", "--report_to", "none", "--save_strategy", "no", "--train_on", "all"])  # fmt: skip
    trained = json.loads((out / "run.json").read_text())["prompt_format"]
    # A fixed question, never a row of the data; the tiny tokenizer adds no BOS token of its own.
    assert trained["format"]["name"] == "muse" and trained["prompt_text"] == "Question: What is the question?\nAnswer: "
    assert "p0" not in (out / "run.json").read_text()
    assert cli.main(["eval", "--model_name_or_path", str(out), *common, "--splits", "forget", "--metrics",
                     "probability", "--output_dir", str(tmp_path / "eval")]) == 0  # fmt: skip
    evaluated = load_eval(Path(tmp_path / "eval" / "eval.json"))["prompt_format"]
    assert evaluated == trained
