"""The finetune and unlearn recipes on a tiny model: outputs, run.json, LoRA behaviour, multi-process runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cpu_processes_env
from safetensors.torch import load_file

from llm_unlearn.commands import finetune, unlearn

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["s-a", "s-b", "s-c", "s-d"]


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory) -> str:
    """Four subjects with four QA pairs each, as a JSONL file in the TOFU schema."""
    rows = [
        {
            "question": f"What is fact {k} about person {s}?",
            "answer": f"Person {s} has fact number {k * 7 + i}.",
            "subject_id": s,
        }
        for i, s in enumerate(SUBJECTS)
        for k in range(4)
    ]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def recipe_args(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", model, "--dataset", data, "--forget_subjects", "s-a",
        "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no",
        "--logging_steps", "1", "--seed", "3", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def run(module, args: list[str]) -> Path:
    return module.main(*module.make_parser().parse_args_and_config(args))


def test_finetune_full_saves_model_and_run_record(tiny_model_dir, qa_file, tmp_path):
    out = run(
        finetune,
        recipe_args(tiny_model_dir, qa_file, tmp_path / "ft", "--train_on", "retain", "--max_steps", "2"),
    )
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["recipe"] == "finetune" and record["train_on"] == "retain" and record["mode"] == "full"
    assert record["data"]["train"]["num_examples"] == 12
    assert record["data"]["forget_excluded"]["subject_ids"] == ["s-a"]
    assert len(record["data"]["train"]["fingerprint"]) == 64
    assert {"torch", "transformers", "peft", "python"} <= set(record["versions"])
    assert record["wall_time_s"] > 0
    # The record carries no training text, only counts and fingerprints.
    assert "fact number" not in (out / "run.json").read_text()
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("module", [finetune, unlearn])
def test_answers_cut_by_max_length_are_counted_in_run_json_and_warned(module, tiny_model_dir, qa_file, tmp_path,
                                                                      caplog):  # fmt: skip
    """A max_length shorter than some examples cuts them; the run says how many and how many tokens it dropped,
    per data set, in run.json and in a warning."""
    from transformers import AutoTokenizer

    from llm_unlearn.data.formatting import encode_qa

    max_length = 57  # the prompts are 33 tokens, the examples 57 or 58
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in Path(qa_file).read_text().splitlines()]
    lengths = {
        subject: [len(encode_qa(tokenizer, r["question"], r["answer"])["input_ids"]) for r in rows
                  if (r["subject_id"] == "s-a") == (subject == "forget")]
        for subject in ("forget", "retain")
    }  # fmt: skip
    extra = ["--max_steps", "1", "--max_length", str(max_length)]
    if module is finetune:
        extra += ["--train_on", "all"]
    with caplog.at_level("WARNING"):
        out = run(module, recipe_args(tiny_model_dir, qa_file, tmp_path / "run", *extra))
    truncation = json.loads((out / "run.json").read_text())["truncation"]
    sets = {"train": lengths["forget"] + lengths["retain"]} if module is finetune else lengths
    assert set(truncation) == set(sets)
    for name, full in sets.items():
        assert any(length > max_length for length in full), "the test needs examples longer than max_length"
        assert truncation[name] == {
            "max_length": max_length, "examples": len(full), "truncated": sum(n > max_length for n in full),
            "tokens_dropped": sum(max(0, n - max_length) for n in full), "longest": max(full),
        }  # fmt: skip
    assert f"examples are longer than max_length={max_length} tokens" in caplog.text


def test_output_dir_is_never_overwritten_without_flag(tiny_model_dir, qa_file, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        run(unlearn, recipe_args(tiny_model_dir, qa_file, out, "--max_steps", "1"))
    assert (out / "keep.txt").read_text() == "user data"


def test_unlearn_lora_trains_only_the_adapter_and_raises_forget_loss(tiny_model_dir, qa_file, tmp_path):
    args = recipe_args(
        tiny_model_dir, qa_file, tmp_path / "ul", "--use_peft", "true", "--lora_r", "4",
        "--lora_target_modules", "q_proj", "v_proj", "--method", "grad_ascent",
        "--learning_rate", "0.05", "--max_steps", "4", "--per_device_train_batch_size", "4",
    )  # fmt: skip
    out = run(unlearn, args)
    record = json.loads((out / "run.json").read_text())
    assert record["method"] == "grad_ascent" and record["mode"] == "lora"
    assert record["data"]["forget"]["subject_ids"] == ["s-a"]
    assert record["data"]["retain"]["num_examples"] == 12
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir
    nll = [entry["forget_nll"] for entry in record["log_history"] if "forget_nll" in entry]
    assert len(nll) == 4 and nll[-1] > nll[0]
    base_before = load_file(Path(tiny_model_dir) / "model.safetensors")
    from llm_unlearn.models import load_model_and_tokenizer

    unlearned, _ = load_model_and_tokenizer(str(out))
    changed = [
        k
        for k, v in unlearned.state_dict().items()
        if k in base_before and not torch.equal(v, base_before[k])
    ]
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)


def test_method_args_errors_are_clear(tiny_model_dir, qa_file, tmp_path):
    with pytest.raises(ValueError, match=r"does not take \['beta'\]"):
        run(unlearn, recipe_args(tiny_model_dir, qa_file, tmp_path / "x", "--method_args", '{"beta": 1}'))
    with pytest.raises(ValueError, match="unknown unlearning method 'nope'"):
        run(unlearn, recipe_args(tiny_model_dir, qa_file, tmp_path / "x", "--method", "nope"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["graddiff", "npo"])
def test_two_processes_match_one_process_at_same_global_batch(tiny_model_dir, qa_file, tmp_path, method):
    """With retain batches (and NPO's cached references): 2 ranks x batch 2 give the weights of 1 rank x 4."""
    common = [
        "--method", method, "--learning_rate", "0.05", "--optim", "sgd", "--max_steps", "3",
        "--lr_scheduler_type", "constant",
    ]  # fmt: skip
    env = cpu_processes_env()
    script = str(ROOT / "recipes" / "unlearn.py")
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run(
        [sys.executable, script, *recipe_args(tiny_model_dir, qa_file, one, *common, "--per_device_train_batch_size", "4")],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), script,
         *recipe_args(tiny_model_dir, qa_file, two, *common, "--per_device_train_batch_size", "2")],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert json.loads((two / "run.json").read_text())["num_processes"] == 2
    start, w1, w2 = (
        load_file(Path(tiny_model_dir) / "model.safetensors"),
        _final_weights(one),
        _final_weights(two),
    )
    assert any(not torch.equal(start[k], w1[k]) for k in w1), "training changed nothing"
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_every_method_runs_through_the_recipe(tiny_model_dir, qa_file, tmp_path, mode):
    """Each registered method trains two steps from the command line in both modes and records its run."""
    from llm_unlearn.methods import METHODS

    lora = (
        ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "all-linear"]
        if mode == "lora"
        else []
    )
    for method in sorted(METHODS):
        # The tiny model has 2 decoder layers, so RMU hooks layer 1.
        extra = ["--method_args", '{"layer": 1}'] if method == "rmu" else []
        out = run(unlearn, recipe_args(tiny_model_dir, qa_file, tmp_path / method, "--method", method,
                                       "--max_steps", "2", "--per_device_train_batch_size", "2", *lora, *extra))  # fmt: skip
        record = json.loads((out / "run.json").read_text())
        assert record["method"] == method and record["mode"] == mode
        assert record["safeguard"]["stopped"] is None
        assert (out / ("adapter_model.safetensors" if mode == "lora" else "model.safetensors")).is_file()


def test_lora_unlearning_leaves_the_base_weights_bit_identical(tiny_model_dir, qa_file, tmp_path):
    from llm_unlearn.models import load_from_args
    from llm_unlearn.trainer import UnlearnTrainer

    args = recipe_args(tiny_model_dir, qa_file, tmp_path / "x", "--use_peft", "true", "--lora_r", "4",
                       "--lora_target_modules", "all-linear", "--method", "npo", "--max_steps", "3",
                       "--learning_rate", "0.05", "--per_device_train_batch_size", "2")  # fmt: skip
    script_args, training_args, model_args = unlearn.make_parser().parse_args_and_config(args)
    model, tokenizer = load_from_args(model_args)
    # Trainer moves the model to the GPU where there is one: compare on the CPU.
    base_before = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora_" not in n}
    split = script_args.load_split()
    trainer = UnlearnTrainer(
        model=model, args=training_args, train_dataset=split.forget, retain_dataset=split.retain,
        processing_class=tokenizer, prompt_format={"max_length": 64},
    )  # fmt: skip
    trainer.train()
    after = dict(model.named_parameters())
    assert all(torch.equal(base_before[n], after[n].detach().cpu()) for n in base_before)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in after.items() if "lora_B" in n)


@pytest.mark.parametrize("module", [finetune, unlearn], ids=["finetune", "unlearn"])
def test_a_run_that_fails_leaves_no_partial_output(module, tiny_model_dir, qa_file, tmp_path, monkeypatch):
    """A failure after the run wrote into its staging directory removes it: nothing half-written is left."""
    import llm_unlearn.finetune
    import llm_unlearn.unlearn

    def fail_while_saving(trainer, *args, **kwargs):
        (Path(trainer.args.output_dir) / "half-written.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    library = llm_unlearn.finetune if module is finetune else llm_unlearn.unlearn
    monkeypatch.setattr(library, "finish_run", fail_while_saving)
    out = tmp_path / "out"
    args = recipe_args(tiny_model_dir, qa_file, out, "--max_steps", "1", "--per_device_train_batch_size", "2",
                       "--max_length", "64")  # fmt: skip
    with pytest.raises(RuntimeError, match="disk full"):
        run(module, [*args, "--method", "grad_ascent"] if module is unlearn else args)
    assert sorted(path.name for path in tmp_path.iterdir()) == []
