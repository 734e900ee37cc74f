"""lm-evaluation-harness tasks in a suite (the optional `harness` extra): a custom multiple-choice task over a
local JSONL file scores what our own per-choice log-probability argmax scores on the same items, on the tiny
Llama, on a LoRA adapter over it and on the embedded model; the scores reach eval.json, the gate and the
report. Without lm-eval the runs are reported as a missing tool; the error that names the extra, the checks of
the settings, the eval.json format, the gate and the report on recorded scores run everywhere."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import statistics
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import MISSING_TOOL, build_tiny_llama, build_tiny_tokenizer, sharpen
from peft import LoraConfig, get_peft_model

from llm_unlearn import cli
from llm_unlearn.commands import evaluate
from llm_unlearn.evaluation import harness, runner
from llm_unlearn.evaluation.gate import run_gate
from llm_unlearn.evaluation.harness import INSTALL_HINT, MINIMUM_LM_EVAL, HarnessConfig, run_harness
from llm_unlearn.evaluation.report import write_report
from llm_unlearn.evaluation.results import (
    EvalFileError,
    EvalResult,
    EvalResultBuilder,
    HarnessScore,
    save_eval,
)
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.models import ModelArguments, load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
TASK = "tiny_mc"
ITEMS = [
    {"question": question, "choices": choices, "answer": answer}
    for question, choices, answer in [
        ("What is the capital of France?", ["Paris", "London", "Rome"], 0),
        ("Where was Ada Lovelace born?", ["Porto", "London", "Berlin"], 1),
        ("What does the fox jump over?", ["the lazy dog", "a fence", "the moon"], 0),
        ("Which award did she receive in 1998?", ["a medal", "the Silver Quill Award"], 1),
        ("Where does Mara Velden work?", ["Brightwater Studios", "a bank", "a school"], 0),
        ("What does Mara Velden sculpt?", ["wood", "stone", "glass", "ice"], 2),
    ]
]
CONTEXT = "Question: {question}\nAnswer:"


def write_task(directory: Path) -> Path:
    """A multiple-choice lm-eval task (`tiny_mc`) over ITEMS in a local JSONL file, both in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    config = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": CONTEXT.replace("{question}", "{{question}}"),
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    (directory / f"{TASK}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


@pytest.fixture
def lm_eval_installed() -> None:
    """Skip as a missing tool when lm-eval is not installed."""
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip(f"{MISSING_TOOL} lm-eval is not installed ({INSTALL_HINT}), so no lm-eval task was run")


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    """The directory of the `tiny_mc` task, for `include_path`."""
    return write_task(tmp_path / "tasks")


@torch.no_grad()
def expected_scores(model: torch.nn.Module, tokenizer, items: list[dict]) -> dict[str, float]:
    """acc and acc_norm by hand: each choice's summed log-probability as the continuation ' choice' of the
    context (its tokens are those the context's own tokenization leaves over), the argmax against the answer;
    acc_norm divides by the choice's length in characters. Also acc's standard error (sample sd / sqrt(n))."""
    context_hits, norm_hits = [], []
    for item in items:
        context = CONTEXT.format(question=item["question"])
        context_length = len(tokenizer(context).input_ids)
        scores = []
        for choice in item["choices"]:
            ids = tokenizer(context + " " + choice).input_ids
            log_probs = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
            per_token = log_probs.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            scores.append(per_token[context_length - 1 :].sum().item())
        best = max(range(len(scores)), key=scores.__getitem__)
        best_norm = max(range(len(scores)), key=lambda i: scores[i] / len(item["choices"][i]))
        context_hits.append(float(best == item["answer"]))
        norm_hits.append(float(best_norm == item["answer"]))
    return {
        "acc": statistics.mean(context_hits),
        "acc_norm": statistics.mean(norm_hits),
        "acc_stderr": statistics.stdev(context_hits) / len(items) ** 0.5,
    }


def _config(task_dir: Path, **args) -> HarnessConfig:
    return HarnessConfig.from_args([TASK], {"include_path": str(task_dir), "include_defaults": False, **args})


# Without lm-eval.


def test_tasks_without_lm_eval_name_the_extra_before_any_model_loads(monkeypatch, tmp_path, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a)
    )

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner, "load_model_and_tokenizer", no_model)
    with pytest.raises(harness.HarnessUnavailableError, match=r"pip install 'llm-unlearn\[harness\]'"):
        Suite(lm_eval_tasks=["mmlu"])
    argv = [
        "eval", "--config", str(REPO / "eval" / "builtin.yaml"), "--model_name_or_path", "embedded",
        "--output_dir", str(tmp_path / "out"), "--lm_eval_tasks", "mmlu", "wmdp_bio",
    ]  # fmt: skip
    assert cli.main(argv) == 2
    assert INSTALL_HINT in capsys.readouterr().err
    assert not (tmp_path / "out" / "eval.json").exists()
    # A suite naming no task needs no lm-eval; `none` on the command line switches a suite's tasks off.
    assert Suite().harness_config() is None
    assert Suite(lm_eval_tasks=["none"]).harness_config() is None


def test_an_older_lm_eval_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.4.9")
    with pytest.raises(harness.HarnessUnavailableError, match=r"lm-eval 0.4.9 is installed; .*>=0\.4\.10: pip"):
        harness.check_installed()


def test_lm_eval_args_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"unknown keys \['fewshot'\]"):
        Suite(lm_eval_args={"fewshot": 5})
    bad = [
        ({"num_fewshot": -1}, "num_fewshot must be an integer >= 0"),
        ({"num_fewshot": True}, "num_fewshot must be an integer >= 0"),
        ({"limit": 0}, "limit must be a number of items"),
        ({"limit": 1.5}, "limit must be a number of items"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1 or 'auto'"),
        ({"include_path": str(tmp_path / "missing")}, "does not exist"),
        ({"include_defaults": False}, "include_path must name the tasks' YAMLs"),
        ({"include_defaults": "no"}, "include_defaults must be true or false"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            HarnessConfig.from_args(["mmlu"], args)
    with pytest.raises(ValueError, match="names a task twice"):
        HarnessConfig.from_args(["mmlu", "mmlu"], {})
    args = {"limit": 0.5, "batch_size": "auto", "include_path": str(tmp_path)}
    config = HarnessConfig.from_args(["mmlu"], args)
    assert (config.limit, config.batch_size, config.include_path) == (0.5, "auto", (str(tmp_path),))
    # The suite's batch size unless lm_eval_args sets one.
    assert HarnessConfig.from_args(["mmlu"], {}, batch_size=4).batch_size == 4


def test_the_minimum_version_is_the_extras_lower_bound():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["harness"] == [f"lm-eval>={MINIMUM_LM_EVAL}"]


def _harness_eval(tmp_path: Path, name: str, acc: float) -> str:
    """An eval.json at tmp_path/name with recorded lm-eval scores: TASK's acc (and acc_norm 0.5), and a subtask
    whose score lm-eval did not give."""
    builder = EvalResultBuilder(model=name).split("retain", {"probability": 0.5}, num_items=2)
    scores = {
        TASK: {"acc": HarnessScore(acc, stderr=0.1, n=6), "acc_norm": HarnessScore(0.5, stderr=0.2, n=6)},
        "tiny_sub": {"acc": None},
    }
    builder.harness(scores, requested=[TASK], lm_eval_version="0.4.13", args={"limit": None})
    return str(save_eval(builder.build(), tmp_path / name / "eval.json"))


def test_eval_json_format_gate_and_report_on_recorded_scores(tmp_path):
    path = _harness_eval(tmp_path, "unlearned", 0.5)
    result = EvalResult(json.loads(Path(path).read_text()))
    assert result.harness_requested() == [TASK]
    assert result.harness_tasks() == [TASK, "tiny_sub"]
    score = result.harness_metrics(TASK)["acc"]
    assert (score.value, score.stderr, score.n) == (0.5, 0.1, 6)
    assert score.text() == "0.5 ± 0.1 n=6"
    assert result.measure(f"harness/{TASK}/acc") == score
    assert result.row()[f"harness/{TASK}/acc_norm"] == 0.5
    assert not result.measure("harness/tiny_sub/acc").computed
    # Relative checks against a target, as for any name; a score lm-eval did not give fails, saying so.
    target = _harness_eval(tmp_path, "target", 0.6)
    checks = [f"harness/{TASK}/acc>=0.8*target", f"harness/{TASK}/acc>=0.9*target", "harness/tiny_sub/acc>=0"]
    outcome = run_gate(path, checks, target=target)
    assert [check.passed for check in outcome.checks] == [True, False, False]
    assert outcome.checks[0].threshold == pytest.approx(0.48)
    assert "NaN" in outcome.checks[2].reason
    broken = json.loads(Path(path).read_text())
    broken["harness"]["tasks"][TASK]["acc"]["stderr"] = "N/A"
    with pytest.raises(EvalFileError, match=f"harness.tasks.{TASK}.acc.stderr"):
        EvalResult(broken)
    # The report: the requested tasks in a table, their subtasks collapsed (HTML only).
    write_report([tmp_path / "target", tmp_path / "unlearned"], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Benchmarks (lm-evaluation-harness)" in markdown
    assert f"| `{TASK}/acc` | 0.6 ± 0.1 n=6 | 0.5 ± 0.1 n=6 |" in markdown
    html = (tmp_path / "report" / "report.html").read_text()
    assert "1 subtasks and groups of the requested tasks" in html and "tiny_sub/acc" in html


# With lm-eval.


@pytest.mark.parametrize("adapter", [False, True], ids=["plain", "lora"])
def test_accuracy_equals_the_per_choice_log_probability_argmax(lm_eval_installed, task_dir, adapter):
    tokenizer = build_tiny_tokenizer()
    model = sharpen(build_tiny_llama(tokenizer))
    if adapter:
        # A LoRA adapter with random (non-zero) weights, evaluated as it is loaded: base plus adapter.
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(model, lora).eval()
    expected = expected_scores(model, tokenizer, ITEMS)
    section = run_harness(model, tokenizer, _config(task_dir, batch_size=4))
    scores = section["tasks"][TASK]
    assert scores["acc"]["value"] == pytest.approx(expected["acc"])
    assert scores["acc_norm"]["value"] == pytest.approx(expected["acc_norm"])
    assert scores["acc"]["stderr"] == pytest.approx(expected["acc_stderr"])
    assert scores["acc"]["n"] == len(ITEMS)
    assert section["requested"] == [TASK] and section["n_shot"] == {TASK: 0}
    # Neither the model's mode nor the caller's random stream is changed by lm-eval's seeding.
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    run_harness(model, tokenizer, _config(task_dir))
    assert torch.equal(torch.rand(1), before) and not model.training


def test_an_unknown_task_is_named_before_the_model_loads(lm_eval_installed, task_dir, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner, "load_model_and_tokenizer", no_model)
    args = {"include_path": str(task_dir), "include_defaults": False}
    suite = Suite(splits=[], lm_eval_tasks=["tiny_mx"], lm_eval_args=args)
    message = r"'tiny_mx', which is not among the tasks of include_path; closest: \['tiny_mc'\]"
    with pytest.raises(ValueError, match=message):
        runner.evaluate_model(ModelArguments(model_name_or_path="embedded"), suite, tmp_path / "out")


def test_eval_json_gate_and_report_end_to_end(lm_eval_installed, task_dir, tmp_path, capsys):
    tokenizer = build_tiny_tokenizer()
    model = sharpen(build_tiny_llama(tokenizer))
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = {"include_path": str(task_dir), "include_defaults": False, "limit": 4, "batch_size": 4}
    argv = [
        "--config", str(REPO / "eval" / "builtin.yaml"), "--model_name_or_path", str(model_dir),
        "--output_dir", str(tmp_path / "run"), "--splits", "retain", "--max_items", "2",
        "--metrics", "probability", "--attacks", "none", "--mia", "{}",
        "--lm_eval_tasks", TASK, "--lm_eval_args", json.dumps(args),
    ]  # fmt: skip
    path = evaluate.main(*evaluate.make_parser().parse_args_and_config(argv))
    result = EvalResult(json.loads(path.read_text()))
    expected = expected_scores(model, tokenizer, ITEMS[:4])
    acc = result.harness_metrics(TASK)["acc"]
    assert (acc.value, acc.n) == (pytest.approx(expected["acc"]), 4)
    assert result["harness"]["args"]["limit"] == 4
    assert result.mean("retain", "probability") is not None and result["timing"]["harness_s"] > 0
    # The gate reads the score, by the same name in a target's eval.json too.
    target = _harness_eval(tmp_path, "target", expected["acc"])
    checks = [f"harness/{TASK}/acc=={expected['acc']}", f"harness/{TASK}/acc>=target"]
    assert cli.main(["gate", str(path), "--target", target, *(f"--check={check}" for check in checks)]) == 0
    assert f"harness/{TASK}/acc" in capsys.readouterr().out
    markdown = (path.parent / "report.md").read_text()
    assert f"| `{TASK}/acc` | {acc.text()} |" in markdown


@pytest.mark.slow
def test_embedded_model_on_the_local_task(lm_eval_installed, task_dir, tmp_path):
    suite_file = tmp_path / "harness.yaml"
    args = {"include_path": str(task_dir), "include_defaults": False}
    # A suite of lm-eval tasks alone: no split of its own.
    suite = {"suite": "harness", "splits": [], "lm_eval_tasks": [TASK], "lm_eval_args": args}
    suite_file.write_text(yaml.safe_dump(suite))
    argv = ["--config", str(suite_file), "--model_name_or_path", "embedded"]
    argv += ["--output_dir", str(tmp_path / "run")]
    path = evaluate.main(*evaluate.make_parser().parse_args_and_config(argv))
    model, tokenizer = load_model_and_tokenizer("embedded")
    expected = expected_scores(model.eval(), tokenizer, ITEMS)
    acc = EvalResult(json.loads(path.read_text())).harness_metrics(TASK)["acc"]
    assert (acc.value, acc.n) == (pytest.approx(expected["acc"]), len(ITEMS))
    print(f"embedded on {TASK}: acc {acc.text()}, acc_norm {expected['acc_norm']:.3g}")
