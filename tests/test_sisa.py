"""SISA on a tiny model: the shard plan, training slice by slice, deletions that retrain only the affected
shard from the right checkpoint (and equal training without the subject), and the ensemble that the eval
passes, generation and evaluate_splits run on unchanged."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from datetime import datetime
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, sharpen
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer

from llm_unlearn import cli, compat
from llm_unlearn.commands import sisa as recipe
from llm_unlearn.data.formatting import IGNORE_INDEX, encode_qa
from llm_unlearn.data.loading import example_fingerprint
from llm_unlearn.data.prompts import format_qa
from llm_unlearn.evaluation import EvalConfig, evaluate_splits
from llm_unlearn.evaluation.generation import generate_greedy
from llm_unlearn.evaluation.statistics import AnswerGroup, compute_item_statistics, score_answer_groups
from llm_unlearn.models import load_model_and_tokenizer
from llm_unlearn.sisa import (
    ShardEnsembleCache,
    ShardEnsembleForCausalLM,
    adapter_sha256,
    base_model_kwargs,
    causal_lm_loss,
    plan_shards,
    shard_adapter_from_peft,
    shard_dir,
)
from llm_unlearn.sisa.delete import delete
from llm_unlearn.sisa.train import SisaArguments

# Six subjects of different sizes; s-f, the smallest, is placed last by the plan.
SUBJECT_SIZES = {"s-a": 4, "s-b": 3, "s-c": 3, "s-d": 2, "s-e": 2, "s-f": 1}
CHECKPOINTS = ("init", "slice-0", "slice-1")


def qa_rows(sizes: dict[str, int]) -> list[dict[str, str]]:
    return [
        {
            "question": f"What is fact {k} about {subject}?",
            "answer": f"{subject} has fact number {k * 7 + len(subject)}.",
            "subject_id": subject,
        }
        for subject, count in sizes.items()
        for k in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def train(model: str, data: str, out: Path, *options: str) -> Path:
    """Train SISA as `llm-unlearn sisa` does, from its command line (with `options` added)."""
    args = [
        "--model_name_or_path", model, "--dataset", data, "--output_dir", str(out),
        "--num_shards", "2", "--num_slices", "2", "--use_peft", "true", "--lora_r", "2",
        "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "0.01", "--num_train_epochs", "3",
        "--per_device_train_batch_size", "2", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
        *options,
    ]  # fmt: skip
    return recipe.main(*recipe.make_parser().parse_args_and_config(args))


def disk_hashes(root: Path, num_shards: int = 2) -> dict[tuple[int, str], str]:
    return {
        (shard, name): adapter_sha256(shard_dir(root, shard) / name)
        for shard in range(num_shards)
        for name in CHECKPOINTS
    }


def read_record(root: Path) -> dict:
    return json.loads((root / "sisa.json").read_text())


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("data") / "qa.jsonl", qa_rows(SUBJECT_SIZES))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data_file, tmp_path_factory) -> Path:
    return train(tiny_model_dir, data_file, tmp_path_factory.mktemp("sisa") / "run")


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may delete from."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_plan_is_deterministic_balanced_and_seeded():
    plan = plan_shards(SUBJECT_SIZES, num_shards=2, num_slices=2, seed=0)
    assert plan == plan_shards(dict(reversed(SUBJECT_SIZES.items())), 2, 2, seed=0)
    assert {place for place in plan.values()} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    loads = [sum(SUBJECT_SIZES[s] for s, (shard, _) in plan.items() if shard == i) for i in range(2)]
    assert sorted(loads) == [7, 8]  # 15 examples: as even as whole subjects allow

    many = {f"p-{i:02d}": 1 + i % 5 for i in range(30)}
    plan = plan_shards(many, num_shards=4, num_slices=2, seed=0)
    loads = [sum(many[s] for s, (shard, _) in plan.items() if shard == i) for i in range(4)]
    assert max(loads) - min(loads) <= max(many.values())
    # Equal sizes leave the choice to the seed.
    equal = {f"p-{i:02d}": 1 for i in range(12)}
    assert plan_shards(equal, 3, 1, seed=0) != plan_shards(equal, 3, 1, seed=1)
    with pytest.raises(ValueError, match=r"2 shards x 4 slices need at least 8 subjects .* has 6"):
        plan_shards(SUBJECT_SIZES, num_shards=2, num_slices=4, seed=0)


def test_training_records_the_plan_stages_and_checkpoint_hashes(trained, data_file, tiny_model_dir):
    record = read_record(trained)
    # A local base has no Hub commit to pin.
    assert record["base_model"] == str(Path(tiny_model_dir).resolve()) and record["base_commit"] is None
    assert record["base_revision"] == "main" and record["trust_remote_code"] is False
    assert record["num_shards"] == 2 and record["num_slices"] == 2 and record["stage_epochs"] == 2
    assert set(record["subjects"]) == set(SUBJECT_SIZES) and record["deletions"] == []
    assert record["truncation"]["examples"] == sum(SUBJECT_SIZES.values())
    assert record["truncation"]["max_length"] == record["format_kwargs"]["max_length"]
    rows = qa_rows(SUBJECT_SIZES)
    for shard in record["shards"]:
        for slice_index, part in enumerate(shard["slices"]):
            members = [
                s
                for s, e in record["subjects"].items()
                if (e["shard"], e["slice"]) == (shard["index"], slice_index)
            ]
            assert part["subjects"] == sorted(members)
            expected = [
                example_fingerprint(r, ("question", "answer")) for r in rows if r["subject_id"] in members
            ]
            assert part["example_fingerprints"] == expected
        # Stage j trains on slices 0..j, 2 epochs at batch size 2.
        cumulative = np.cumsum([part["num_examples"] for part in shard["slices"]])
        assert [part["steps"] for part in shard["slices"]] == [2 * math.ceil(n / 2) for n in cumulative]
        assert shard["checkpoints"] == {
            name: adapter_sha256(shard_dir(trained, shard["index"]) / name) for name in CHECKPOINTS
        }
    assert record["training"]["steps"] == sum(p["steps"] for s in record["shards"] for p in s["slices"])
    assert (trained / "tokenizer.json").is_file() and (trained / "run.json").is_file()
    wrote = {entry["path"] for entry in json.loads((trained / "run.json").read_text())["artifacts"]["wrote"]}
    assert {"sisa.json", "shards/shard-1/slice-1/adapter_model.safetensors"} <= wrote
    assert not list(trained.parent.glob(".*partial")) and not (trained / ".trainer").exists()
    # Fingerprints and ids only, never the training text.
    assert "fact number" not in (trained / "sisa.json").read_text() + (trained / "run.json").read_text()


def test_deletion_retrains_only_the_affected_shard_from_the_slice_checkpoint(run_copy):
    before = read_record(run_copy)
    hashes_before = disk_hashes(run_copy)
    # A subject in the second slice: its shard restarts from the checkpoint after the first slice.
    subject = next(s for s, e in before["subjects"].items() if e["slice"] == 1)
    shard = before["subjects"][subject]["shard"]
    other = 1 - shard
    fingerprints = before["subjects"][subject]["example_fingerprints"]
    assert set(fingerprints) <= set(before["shards"][shard]["slices"][1]["example_fingerprints"])

    entry = delete(run_copy, [subject])

    after = read_record(run_copy)
    hashes_after = disk_hashes(run_copy)
    assert all(hashes_after[other, name] == hashes_before[other, name] for name in CHECKPOINTS)
    assert after["shards"][other] == before["shards"][other]
    assert hashes_after[shard, "init"] == hashes_before[shard, "init"]
    assert hashes_after[shard, "slice-0"] == hashes_before[shard, "slice-0"]
    assert hashes_after[shard, "slice-1"] != hashes_before[shard, "slice-1"]
    recorded = [fp for s in after["shards"] for part in s["slices"] for fp in part["example_fingerprints"]]
    assert not set(fingerprints) & set(recorded)
    assert subject not in after["subjects"] and after["deleted_subjects"] == [subject]

    assert after["deletions"] == [entry]
    assert entry["subjects"] == [subject] and entry["example_fingerprints"] == {subject: fingerprints}
    (retrained,) = entry["retrained"]
    assert retrained["shard"] == shard and retrained["from_checkpoint"] == "slice-0"
    assert retrained["retrained_slices"] == [1]
    assert retrained["replaced_checkpoints"] == {"slice-1": hashes_before[shard, "slice-1"]}
    assert retrained["new_checkpoints"] == {"slice-1": hashes_after[shard, "slice-1"]}
    remaining = sum(p["num_examples"] for p in after["shards"][shard]["slices"])
    assert entry["steps"] == retrained["steps"] == 2 * math.ceil(remaining / 2)
    assert entry["full_retrain"]["steps"] == sum(p["steps"] for s in after["shards"] for p in s["slices"])
    assert entry["cost_fraction"]["steps"] == entry["steps"] / entry["full_retrain"]["steps"] < 0.5
    assert datetime.fromisoformat(entry["started"]) <= datetime.fromisoformat(entry["finished"])
    assert entry["ensemble_sha256_before"] == before["ensemble_sha256"] != after["ensemble_sha256"]
    assert "Exact unlearning" in entry["guarantee"]

    # Running the same deletion again does nothing; an unknown id is refused with what is known.
    assert delete(run_copy, [subject]) is None
    assert read_record(run_copy) == after and disk_hashes(run_copy) == hashes_after
    with pytest.raises(
        ValueError, match=rf"unknown subject id\(s\) \['nobody'\].*deleted before: \['{subject}'\]"
    ):
        delete(run_copy, ["nobody"])


def test_deletion_equals_training_without_the_subject(tiny_model_dir, run_copy, tmp_path):
    reduced = {s: n for s, n in SUBJECT_SIZES.items() if s != "s-f"}
    without = train(tiny_model_dir, write_jsonl(tmp_path / "reduced.jsonl", qa_rows(reduced)), tmp_path / "w")
    places = {s: (e["shard"], e["slice"]) for s, e in read_record(run_copy)["subjects"].items() if s != "s-f"}
    assert places == {s: (e["shard"], e["slice"]) for s, e in read_record(without)["subjects"].items()}

    delete(run_copy, ["s-f"])

    # Bit for bit: every checkpoint of every shard is the one that training without s-f produces.
    assert disk_hashes(run_copy) == disk_hashes(without)
    assert read_record(run_copy)["ensemble_sha256"] == read_record(without)["ensemble_sha256"]


def test_the_cli_deletes_and_an_interrupted_deletion_leaves_the_run_intact(run_copy, monkeypatch):
    before, hashes = read_record(run_copy), disk_hashes(run_copy)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        delete(run_copy, ["s-a"])
    assert read_record(run_copy) == before and disk_hashes(run_copy) == hashes
    assert sorted(path.name for path in (run_copy / "shards").iterdir()) == ["shard-0", "shard-1"]
    monkeypatch.undo()

    # Killed between moving the old shard aside and moving the new one in: the next run puts it back first.
    shard = shard_dir(run_copy, before["subjects"]["s-a"]["shard"])
    shard.rename(shard.with_name(f".{shard.name}.old"))
    assert cli.main(["sisa", "--output_dir", str(run_copy), "--delete_subjects", "s-a"]) == 0
    assert read_record(run_copy)["deleted_subjects"] == ["s-a"]


def test_a_changed_adapter_is_refused_when_loading(run_copy):
    weights = shard_dir(run_copy, 1) / "slice-1" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match=r"shard 1's served adapter .* does not match the hash in sisa.json"):
        load_model_and_tokenizer(str(run_copy))


def test_sisa_refuses_forget_selectors_and_data_without_subjects(tiny_model_dir, tmp_path):
    with pytest.raises(
        ValueError, match=r"\['forget_subjects'\] do not apply; delete subjects after training"
    ):
        SisaArguments(forget_subjects=["s-a"])
    rows = [
        {**row, "subject_id": None} if index == 2 else row for index, row in enumerate(qa_rows(SUBJECT_SIZES))
    ]
    with pytest.raises(ValueError, match=r"1 row\(s\) have no subject_id, e.g. row 2"):
        train(tiny_model_dir, write_jsonl(tmp_path / "qa.jsonl", rows), tmp_path / "out")


# Two commits of one Hub model with different weights; the branch `main` has moved on to the second.
PINNED, HEAD = hashlib.sha1(b"pinned").hexdigest(), hashlib.sha1(b"head").hexdigest()


@pytest.fixture
def hub_snapshots(tmp_path, tiny_tokenizer, monkeypatch) -> dict[str, dict[str, torch.Tensor]]:
    """An offline Hub cache holding `org/tiny` at commits PINNED and HEAD (refs/main names HEAD), each a tiny
    Llama of its own seed; returns each commit's weights."""
    repo = tmp_path / "hub" / "models--org--tiny"
    weights = {}
    for seed, commit in enumerate((PINNED, HEAD)):
        model = build_tiny_llama(tiny_tokenizer, seed=seed)
        model.save_pretrained(repo / "snapshots" / commit)
        tiny_tokenizer.save_pretrained(repo / "snapshots" / commit)
        weights[commit] = model.state_dict()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HEAD)
    # huggingface_hub reads the environment once, at import, into the constants it reads when called: set both.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return weights


def same_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


def test_a_deletion_retrains_on_the_pinned_revision_of_a_hub_base(
    hub_snapshots, data_file, tmp_path, monkeypatch
):
    assert not same_weights(hub_snapshots[PINNED], hub_snapshots[HEAD])
    run = train("org/tiny", data_file, tmp_path / "run", "--model_revision", PINNED)
    record = read_record(run)
    assert (record["base_model"], record["base_revision"], record["base_commit"]) == ("org/tiny", PINNED, PINNED)
    assert record["trust_remote_code"] is False

    # Every base model that transformers loads from the cache, with the revision it was asked for.
    loads = []
    from_pretrained = AutoModelForCausalLM.from_pretrained

    def recording(source, *args, **kwargs):
        model = from_pretrained(source, *args, **kwargs)
        loads.append((source, kwargs.get("revision"), copy.deepcopy(model.state_dict())))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    subject = next(s for s, e in record["subjects"].items() if e["slice"] == 1)
    entry = delete(run, [subject])
    assert [shard["retrained_slices"] for shard in entry["retrained"]] == [[1]]
    # The retrained shard trained on the commit the others were trained on, not on the branch's head.
    ((source, revision, weights),) = loads
    assert (source, revision) == ("org/tiny", PINNED) and same_weights(weights, hub_snapshots[PINNED])

    # The ensemble runs its shards on that commit too.
    ensemble, _ = load_model_and_tokenizer(str(run))
    assert same_weights(ensemble.base.state_dict(), hub_snapshots[PINNED])
    assert [load[:2] for load in loads] == [("org/tiny", PINNED)] * 2


def test_the_recorded_commit_pins_the_base_and_a_run_recorded_before_the_pin_loads_it_by_name():
    pinned = {"base_model": "org/tiny", "base_revision": "main", "base_commit": PINNED, "trust_remote_code": True}
    assert base_model_kwargs(pinned) == {"name_or_path": "org/tiny", "revision": PINNED, "trust_remote_code": True}
    assert base_model_kwargs({"base_model": "org/tiny"}) == {
        "name_or_path": "org/tiny",
        "revision": None,
        "trust_remote_code": False,
    }


# The ensemble, on hand-made shard adapters of a sharpened tiny model (so that shards disagree).


@pytest.fixture(scope="module")
def shard_models(tiny_tokenizer):
    """Three LoRA shards on one base: the ensemble and, for reference, each shard merged into its own copy."""
    base = sharpen(build_tiny_llama(tiny_tokenizer))
    adapters, merged = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        model = get_peft_model(
            copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
        adapters.append(shard_adapter_from_peft(model, "default", f"shard {seed}"))
        merged.append(model.merge_and_unload().eval())
    return ShardEnsembleForCausalLM(base, adapters).eval(), merged


def ensemble_log_probs(
    merged, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """log((1/k) sum_i softmax(logits_i)), by hand from the shard models."""
    with torch.no_grad():
        probs = [
            torch.softmax(m(input_ids=input_ids, attention_mask=attention_mask).logits, -1) for m in merged
        ]
    return torch.stack(probs).mean(dim=0).log()


def test_ensemble_logits_are_the_log_mean_of_shard_probabilities(shard_models):
    ensemble, merged = shard_models
    input_ids = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding
    expected = ensemble_log_probs(merged, input_ids, attention_mask)
    with torch.no_grad():
        output = ensemble(input_ids=input_ids, attention_mask=attention_mask)
        last = ensemble(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=2, use_cache=False)
    torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.logits.logsumexp(-1), torch.zeros(2, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(last.logits, expected[:, -2:], atol=1e-5, rtol=1e-5)
    assert isinstance(compat.output_cache(output), ShardEnsembleCache) and compat.output_cache(last) is None
    assert (
        len(compat.output_cache(output).shard_caches) == 3
        and compat.output_cache(output).get_seq_length() == 7
    )
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    loss = ensemble(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    targets = labels[:, 1:]
    picked = expected[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert loss.item() == pytest.approx(-picked[targets != IGNORE_INDEX].mean().item(), abs=1e-5)
    # Saved as one checkpoint it would come back as the base model alone.
    with pytest.raises(TypeError, match=r"stored as its SISA directory"):
        ensemble.save_pretrained("unused")


def test_the_ensemble_loss_is_the_causal_lm_cross_entropy_of_its_log_probabilities(shard_models):
    ensemble, merged = shard_models
    input_ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[0, :3] = IGNORE_INDEX  # a prompt
    labels[1, -1] = IGNORE_INDEX
    expected = ensemble_log_probs(merged, input_ids)
    # By hand: position t predicts label t + 1; -100 is not scored.
    picked = [
        -float(expected[row, t, labels[row, t + 1]])
        for row in range(2)
        for t in range(5)
        if labels[row, t + 1] != IGNORE_INDEX
    ]
    with torch.no_grad():
        mean = ensemble(input_ids=input_ids, labels=labels, use_cache=False).loss
        # The Trainer's count of scored tokens over all gradient-accumulation steps divides the sum instead.
        over_count = ensemble(
            input_ids=input_ids, labels=labels, use_cache=False, num_items_in_batch=torch.tensor(20)
        ).loss
    assert mean.item() == pytest.approx(sum(picked) / len(picked), abs=1e-5)
    assert over_count.item() == pytest.approx(sum(picked) / 20, abs=1e-5)
    assert causal_lm_loss(expected, labels, 20).item() == pytest.approx(sum(picked) / 20, abs=1e-5)


def test_generate_continues_from_a_cache_the_ensemble_returned(shard_models):
    ensemble, _ = shard_models
    input_ids = torch.tensor([[5, 17, 42, 9, 77, 120]])
    cache_name = compat.cache_argument(ensemble.base)
    with torch.no_grad():
        fresh = ensemble.generate(input_ids=input_ids, max_new_tokens=4, do_sample=False)
        cache = compat.output_cache(ensemble(input_ids=input_ids[:, :-1], use_cache=True))
        # `generate` feeds only the positions the cache lacks, going by the cache's `is_linear` per layer.
        assert cache.is_linear == [False, False] and cache.is_croppable and not cache.is_compileable
        continued = ensemble.generate(
            input_ids=input_ids, max_new_tokens=4, do_sample=False, **{cache_name: cache}
        )
    assert continued.tolist() == fresh.tolist()
    assert [shard.get_seq_length() for shard in cache.shard_caches] == [9, 9, 9]


def test_an_adapter_with_trainable_tokens_is_refused(tiny_tokenizer):
    config = LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=[3, 4])
    model = get_peft_model(build_tiny_llama(tiny_tokenizer), config)
    with pytest.raises(
        ValueError, match=r"adapter 'shard 0' trains token embeddings \(trainable_token_indices="
    ):
        shard_adapter_from_peft(model, "default", "shard 0")


def manual_statistics(merged, prompt_ids: list[int], answer_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Answer-token log-probabilities and argmax hits of the ensemble, by hand without a cache."""
    log_probs = ensemble_log_probs(merged, torch.tensor([prompt_ids + answer_ids]))[0]
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(answer_ids) - 1)
    targets = torch.tensor(answer_ids)
    return (
        log_probs[positions, targets].numpy(),
        (log_probs[positions].argmax(-1) == targets).numpy(),
    )


QUESTIONS = ["Where was Ada Lovelace born?", "Hi?", "What is the capital of France?"]
ANSWERS = [
    ["Ada Lovelace was born in London.", "In Paris."],
    ["I don't know."],
    ["Paris.", "London", "Porto"],
]


def test_eval_passes_on_the_ensemble_agree_with_the_shard_models(shard_models, tiny_tokenizer):
    ensemble, merged = shard_models

    def ids(text: str) -> list[int]:
        return tiny_tokenizer(text, add_special_tokens=False)["input_ids"]

    prompts = [format_qa(tiny_tokenizer, question)[0] for question in QUESTIONS]
    groups = [
        AnswerGroup(ids(p), [ids(a) for a in answers]) for p, answers in zip(prompts, ANSWERS, strict=True)
    ]
    pad = tiny_tokenizer.pad_token_id
    encoded = [
        {
            "input_ids": g.prompt_ids + g.answer_ids[0],
            "labels": [IGNORE_INDEX] * len(g.prompt_ids) + g.answer_ids[0],
        }
        for g in groups
    ]
    items = compute_item_statistics(ensemble, encoded, batch_size=2, pad_token_id=pad)
    scored = score_answer_groups(ensemble, groups, batch_size=4, pad_token_id=pad)
    for group, item, answers in zip(groups, items, scored, strict=True):
        logprobs, hits = manual_statistics(merged, group.prompt_ids, group.answer_ids[0])
        np.testing.assert_allclose(item.logprobs, logprobs, atol=1e-5)
        assert (item.argmax_hits == hits).all()
        for answer_ids, stats in zip(group.answer_ids, answers, strict=True):
            logprobs, hits = manual_statistics(merged, group.prompt_ids, answer_ids)
            np.testing.assert_allclose(stats.logprobs, logprobs, atol=1e-5)
            assert (stats.argmax_hits == hits).all()

    generated = generate_greedy(
        ensemble, tiny_tokenizer, [ids(p) for p in prompts], max_new_tokens=6, batch_size=2
    )
    for prompt, text in zip(prompts, generated, strict=True):
        tokens = ids(prompt)
        for _ in range(6):
            next_token = int(ensemble_log_probs(merged, torch.tensor([tokens]))[0, -1].argmax())
            tokens.append(next_token)
            if next_token == tiny_tokenizer.eos_token_id:
                break
        expected = tiny_tokenizer.decode(tokens[len(ids(prompt)) :], skip_special_tokens=True).strip()
        assert text == expected
    # transformers' own generate decodes the ensemble the same way.
    inputs = tiny_tokenizer(prompts[:1], return_tensors="pt", add_special_tokens=False)
    output = ensemble.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert (
        tiny_tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        == (generated[0])
    )


def test_a_sisa_dir_loads_as_the_ensemble_of_its_served_adapters(trained, data_file):
    # The one model loader recognises a SISA directory, so every recipe and the eval suite serve the ensemble.
    ensemble, tokenizer = load_model_and_tokenizer(str(trained))
    assert isinstance(ensemble, ShardEnsembleForCausalLM) and len(ensemble.shards) == 2
    # Each shard as PEFT itself loads and merges its served adapter.
    merged = [load_model_and_tokenizer(str(shard_dir(trained, i) / "slice-1"))[0].eval() for i in range(2)]
    input_ids = torch.tensor([tokenizer("What is fact 1 about s-a?", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = ensemble(input_ids=input_ids).logits
    torch.testing.assert_close(logits, ensemble_log_probs(merged, input_ids), atol=1e-5, rtol=1e-5)

    rows = Dataset.from_list(qa_rows(SUBJECT_SIZES))
    splits = {
        "forget": rows.filter(lambda row: row["subject_id"] == "s-a"),
        "retain": rows.filter(lambda row: row["subject_id"] != "s-a").select(range(4)),
    }
    config = EvalConfig(
        metrics=("probability", "rouge_l_recall"),
        batch_size=4,
        max_new_tokens=4,
        attacks={"quantize_8bit": {}},
    )
    result = evaluate_splits(ensemble, tokenizer, splits, config)
    for name, dataset in splits.items():
        for item, row in zip(result["splits"][name]["items"], dataset, strict=True):
            encoded = encode_qa(tokenizer, row["question"], row["answer"])
            answer_start = encoded["labels"].count(IGNORE_INDEX)
            logprobs, _ = manual_statistics(
                merged, encoded["input_ids"][:answer_start], encoded["input_ids"][answer_start:]
            )
            assert item["probability"] == pytest.approx(math.exp(logprobs.mean()), rel=1e-4)
            assert 0 <= item["rouge_l_recall"] <= 1
    # The quantization attack rounds the shared base's decoder weights (2 layers x 7 linear layers).
    assert result["attacks"]["quantize_8bit"]["num_quantized_weights"] == 14
