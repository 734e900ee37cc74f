"""`llm-unlearn forget` end to end on a tiny model: a verified request with its report and ledger rows, a rerun
that does no work, a run killed part-way and resumed, a batch, a request that fails its gate, and a request
carried out exactly by a SISA deletion."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from llm_unlearn import unlearn
from llm_unlearn.commands import forget, sisa
from llm_unlearn.data.schema import DataError
from llm_unlearn.deletion import paths, pipeline
from llm_unlearn.deletion.ledger import Ledger
from llm_unlearn.deletion.report import EXACT_GUARANTEE, REPORT_MD, verify_report

SUBJECTS = ["s-a", "s-b", "s-c", "s-d"]
PASSING = "forget/probability<target"
KEEPS_UTILITY = "retain/probability>=0.5*target"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    """A QA file of four subjects, a two-step LoRA gradient-ascent recipe and a one-metric suite."""
    directory = tmp_path_factory.mktemp("forget-inputs")
    rows = [
        {"question": f"What is fact {k} about person {s}?", "answer": f"Person {s} has fact number {k * 7 + i}.",
         "subject_id": s}
        for i, s in enumerate(SUBJECTS)
        for k in range(3)
    ]  # fmt: skip
    data = directory / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = directory / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"method": "grad_ascent", "use_peft": True, "lora_r": 8, "lora_target_modules": "all-linear",
             "learning_rate": 0.05, "max_steps": 4, "per_device_train_batch_size": 4, "max_length": 64,
             "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "seed": 0}
        )
    )  # fmt: skip
    suite = directory / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {"suite": "tiny", "splits": ["forget", "retain"], "metrics": ["probability"], "max_length": 64,
             "batch_size": 8, "max_items": 4, "seed": 0, "report": False}
        )
    )  # fmt: skip
    return {"model": tiny_model_dir, "data": str(data), "recipe": str(recipe), "suite": str(suite)}


def forget_args(setup: dict[str, str], out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", setup["model"], "--dataset", setup["data"], "--recipe", setup["recipe"], "--suite", setup["suite"],
        "--output_dir", str(out), *extra,
    ]  # fmt: skip


def run_forget(args: list[str]) -> int:
    return forget.main(*forget.make_parser().parse_args_and_config(args))


def kill_self(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def run_and_kill(moment: str, args: list[str]) -> None:
    """Run the command in this (forked) process and SIGKILL it at `moment` of the unlearn step."""
    finish_step = Ledger.finish_step
    if moment == "after the step was recorded":

        def finish_then_kill(self, request_id, step, *rest, **kwargs):
            finished = finish_step(self, request_id, step, *rest, **kwargs)
            if step == "unlearn":
                kill_self()
            return finished

        Ledger.finish_step = finish_then_kill
    elif moment == "after the output landed, before it was recorded":

        def kill_before_finishing(self, request_id, step, *rest, **kwargs):
            if step == "unlearn":
                kill_self()
            return finish_step(self, request_id, step, *rest, **kwargs)

        Ledger.finish_step = kill_before_finishing
    else:  # while training, before the recipe moves its output into place
        unlearn.finish_run = kill_self
    run_forget(args)


@pytest.fixture
def count_calls(monkeypatch):
    """Count the unlearn and eval recipe runs."""
    calls = {"unlearn": 0, "evaluate": 0}

    def counting(name, run):
        def counted(*args, **kwargs):
            calls[name] += 1
            return run(*args, **kwargs)

        return counted

    for name, module, function in (("unlearn", paths, "unlearn"), ("evaluate", pipeline, "evaluate_model")):
        monkeypatch.setattr(module, function, counting(name, getattr(module, function)))
    return calls


def test_a_request_is_verified_with_its_report_and_a_rerun_does_no_work(setup, tmp_path, count_calls):
    out = tmp_path / "requests"
    args = forget_args(setup, out, "--subject", "s-b", "--subject", "s-a", "--check", PASSING)
    assert run_forget(args) == 0
    assert count_calls == {"unlearn": 1, "evaluate": 2}
    with Ledger(out / "ledger.sqlite") as ledger:
        (request,) = ledger.requests()
        assert request.status == "verified" and request.subjects == ["s-a", "s-b"]
        assert [step.step for step in ledger.steps(request.request_id)] == list(pipeline.STEPS)
        assert all(step.status == "done" and step.output_hash for step in ledger.steps(request.request_id))
        assert len(ledger.examples_of(["s-a"])) == 3 and ledger.known_subjects() == SUBJECTS
        statuses = [e["status"] for e in ledger.history(request.request_id) if e["kind"] == "status"]
        assert statuses == ["received", "running", "verified"]
    directory = out / request.request_id
    assert (directory / "model" / "adapter_model.safetensors").is_file()
    assert (directory / "eval" / "eval.json").is_file() and (directory / REPORT_MD).is_file()
    resolved = json.loads((directory / "resolve.json").read_text())
    assert resolved["num_examples"] == 6 and len(resolved["examples"]["s-a"]) == 3
    report_path = directory / "unlearning_report.json"
    assert verify_report(report_path)
    report = json.loads(report_path.read_text())
    assert report["request"]["status"] == "verified" and report["removed"]["num_examples"] == 6
    assert [test["check"] for test in report["tests"]] == [PASSING] and report["tests_passed"]
    assert (
        report["method"]["name"] == "grad_ascent"
        and report["method"]["hyperparameters"]["lora"]["lora_r"] == 8
    )
    assert "retain/probability" in report["utility"]
    # Never the removed text: only counts and fingerprints.
    for path in (report_path, directory / REPORT_MD, directory / "resolve.json"):
        assert "fact number" not in path.read_text()

    # The same command again finds the request verified and does nothing.
    assert run_forget(args) == 0
    assert count_calls == {"unlearn": 1, "evaluate": 2}
    with Ledger(out / "ledger.sqlite") as ledger:
        assert len(ledger.requests()) == 1
        assert len(ledger.history(request.request_id)) == len(statuses) + 2 * len(pipeline.STEPS)


def test_a_failing_gate_fails_the_request_with_the_failed_checks(setup, tmp_path, count_calls):
    out = tmp_path / "requests"
    args = forget_args(setup, out, "--subject", "s-c", "--check", PASSING, "--check", "forget/probability<=0")
    assert run_forget(args) == 1
    with Ledger(out / "ledger.sqlite") as ledger:
        (request,) = ledger.requests()
    assert request.status == "failed"
    assert request.reason.startswith("checks failed: forget/probability<=0 (value 0.")
    assert PASSING not in request.reason
    report = json.loads((out / request.request_id / "unlearning_report.json").read_text())
    assert report["request"]["status"] == "failed" and [t["passed"] for t in report["tests"]] == [True, False]
    # Finished, so a rerun does not repeat it.
    assert run_forget(args) == 1 and count_calls == {"unlearn": 1, "evaluate": 2}
    # Other checks make another request, which evaluates only its own unlearned model: the target's eval is
    # the one already made.
    assert run_forget(forget_args(setup, out, "--subject", "s-c", "--check", PASSING)) == 0
    assert count_calls == {"unlearn": 2, "evaluate": 3}
    with Ledger(out / "ledger.sqlite") as ledger:
        retried = ledger.requests()[1]
        assert retried.status == "verified"
        assert ledger.step(retried.request_id, "evaluate_target").detail == {"found_complete": True}


@pytest.mark.parametrize(
    ("moment", "unlearn_status", "unlearn_runs"),
    [
        ("after the step was recorded", "done", 0),
        ("after the output landed, before it was recorded", "running", 0),
        ("while training", "running", 1),
    ],
)
def test_a_killed_run_resumes_without_repeating_finished_work(
    setup, tmp_path, count_calls, moment, unlearn_status, unlearn_runs
):
    out = tmp_path / "requests"
    args = forget_args(setup, out, "--subject", "s-d", "--check", PASSING)
    # A forked process starts without importing torch and transformers again, but cannot use CUDA once this
    # process has (on a GPU machine): spawn then. SIGKILL ends it with no clean-up and no exit handlers, as a
    # machine that loses the job would.
    start = "spawn" if torch.cuda.is_initialized() else "fork"
    killed = multiprocessing.get_context(start).Process(target=run_and_kill, args=(moment, args))
    killed.start()
    killed.join(timeout=300)
    assert killed.exitcode == -signal.SIGKILL
    with Ledger(out / "ledger.sqlite") as ledger:
        (request,) = ledger.requests()
        assert request.status == "running"
        steps = {step.step: step.status for step in ledger.steps(request.request_id)}
        assert steps == {"resolve": "done", "unlearn": unlearn_status}
        before = ledger.history(request.request_id)
    model = out / request.request_id / "model"
    assert (model / "run.json").is_file() == (unlearn_runs == 0)

    assert run_forget(args) == 0
    assert count_calls == {"unlearn": unlearn_runs, "evaluate": 2}
    assert not list(model.parent.glob(".*partial"))
    with Ledger(out / "ledger.sqlite") as ledger:
        after = ledger.history(request.request_id)
        assert ledger.request(request.request_id).status == "verified"
        assert all(step.status == "done" for step in ledger.steps(request.request_id))
    # The killed run's record is kept as it was, and the rerun's follows it.
    assert after[: len(before)] == before
    resumed = [(event.get("step"), event["status"]) for event in after[len(before) :]]
    unlearn_events = {0: [("unlearn", "skipped")] if unlearn_status == "done" else [("unlearn", "done")],
                      1: [("unlearn", "running"), ("unlearn", "done")]}[unlearn_runs]  # fmt: skip
    assert resumed[: 2 + len(unlearn_events)] == [(None, "running"), ("resolve", "skipped"), *unlearn_events]
    assert resumed[-1] == (None, "verified")


def test_a_batch_processes_each_request_with_its_own_status(setup, tmp_path, count_calls):
    out = tmp_path / "requests"
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        json.dumps({"request_id": "erase-1", "subjects": ["s-a"]})
        + "\n\n"
        + json.dumps({"subjects": ["s-c", "s-d"]})
    )
    args = forget_args(
        setup, out, "--requests_file", str(batch), "--check", PASSING, "--ledger", str(tmp_path / "l.db")
    )
    assert run_forget(args) == 0
    assert count_calls == {"unlearn": 2, "evaluate": 4}
    with Ledger(tmp_path / "l.db") as ledger:
        requests = ledger.requests()
    assert [(r.request_id == "erase-1", r.subjects, r.status) for r in requests] == [
        (True, ["s-a"], "verified"), (False, ["s-c", "s-d"], "verified"),
    ]  # fmt: skip
    report = json.loads((out / requests[1].request_id / "unlearning_report.json").read_text())
    assert [entry["num_examples"] for entry in report["removed"]["subjects"]] == [3, 3]


def test_bad_input_is_refused_with_a_clear_error(setup, tmp_path):
    out = tmp_path / "requests"
    with pytest.raises(ValueError, match=r"at least one --check"):
        run_forget(forget_args(setup, out, "--subject", "s-a"))
    with pytest.raises(ValueError, match=r"--subject ID \.\.\.\) or a --requests_file, not both"):
        run_forget(forget_args(setup, out, "--check", PASSING))
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"subjects": []}\n')
    with pytest.raises(ValueError, match=r"line 1: 'subjects' must be a non-empty list"):
        run_forget(forget_args(setup, out, "--requests_file", str(batch), "--check", PASSING))
    # An unknown subject is refused before anything is recorded (or a model loads), naming what the data holds.
    with pytest.raises(
        pipeline.RequestError,
        match=r"unknown subject id\(s\) 'nobody' \(no close match\)\. .* holds 4 subject\(s\): s-a",
    ):
        run_forget(forget_args(setup, out, "--subject", "nobody", "--check", PASSING))
    assert not out.exists()


@pytest.fixture(scope="module")
def sisa_run(setup, tmp_path_factory) -> Path:
    """A SISA run on the four subjects: 2 shards x 2 slices, one subject per slice."""
    args = [
        "--model_name_or_path", setup["model"], "--dataset", setup["data"],
        "--output_dir", str(tmp_path_factory.mktemp("sisa") / "run"), "--num_shards", "2", "--num_slices", "2",
        "--use_peft", "true", "--lora_r", "2", "--lora_target_modules", "q_proj", "v_proj",
        "--learning_rate", "0.05", "--num_train_epochs", "3", "--per_device_train_batch_size", "2",
        "--max_length", "64", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
    ]  # fmt: skip
    return sisa.main(*sisa.make_parser().parse_args_and_config(args))


def sisa_forget_args(setup: dict[str, str], model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--suite", setup["suite"], "--output_dir", str(out), *extra]


def test_a_sisa_request_retrains_only_the_subjects_shard_and_reports_the_exact_guarantee(
    setup, sisa_run, tmp_path, count_calls
):
    before = {path: path.read_bytes() for path in sisa_run.rglob("*") if path.is_file()}
    record = json.loads((sisa_run / "sisa.json").read_text())
    shard = record["subjects"]["s-b"]["shard"]
    out = tmp_path / "requests"
    # The data comes from the run's sisa.json, and no recipe is named: the deletion retrains with the run's own
    # settings.
    args = sisa_forget_args(setup, sisa_run, out, "--subject", "s-b", "--check", KEEPS_UTILITY)
    assert run_forget(args) == 0
    assert count_calls == {"unlearn": 0, "evaluate": 2}
    with Ledger(out / "ledger.sqlite") as ledger:
        (request,) = ledger.requests()
        # The lineage knows the new model holds the other subjects' examples, and not the deleted subject's.
        model = out / request.request_id / "model"
        assert str(model) in ledger.model_versions_with(["s-a"]).values()
        assert str(model) not in ledger.model_versions_with(["s-b"]).values()
    assert request.status == "verified"
    # The trained run is left as it was; the request's model is a copy with the subject deleted.
    assert {path: path.read_bytes() for path in sisa_run.rglob("*") if path.is_file()} == before
    deleted = json.loads((model / "sisa.json").read_text())
    assert deleted["deleted_subjects"] == ["s-b"] and "s-b" not in deleted["subjects"]
    (retrained,) = deleted["deletions"][0]["retrained"]
    assert retrained["shard"] == shard
    for index, (old, new) in enumerate(zip(record["shards"], deleted["shards"], strict=True)):
        assert (old["checkpoints"] == new["checkpoints"]) == (index != shard)
    assert not list(model.parent.glob(".*partial"))

    report = json.loads((out / request.request_id / "unlearning_report.json").read_text())
    assert verify_report(out / request.request_id / "unlearning_report.json")
    assert report["method"]["name"] == "sisa" and report["method"]["kind"] == "exact"
    assert report["method"]["hyperparameters"]["sharding"]["num_shards"] == 2
    assert report["guarantee"] == EXACT_GUARANTEE and report["removed"]["num_examples"] == 3
    comparison = report["comparison"]
    assert comparison["kind"] == "exact" and comparison["values"]["retrained_shards"] == 1
    cost = comparison["values"]
    assert cost["cost_fraction_steps"] == cost["deletion_steps"] / cost["full_retrain_steps"]
    assert 0 < cost["cost_fraction_steps"] < 1
    # The replaced checkpoints of the trained run are listed as having contained the subject's data.
    replaced = [entry for entry in report["artifacts"]["contained_data"] if "replaced" in entry["role"]]
    assert {Path(entry["path"]).name for entry in replaced} == set(retrained["replaced_checkpoints"])
    assert all(Path(entry["path"]).is_relative_to(sisa_run) for entry in replaced)
    md = (out / request.request_id / REPORT_MD).read_text()
    assert "sisa (exact unlearning, lora)" in md and "Exact: the served model is a retrained model" in md

    # Again: nothing to do. From the new model, the deleted subject cannot be deleted again.
    assert run_forget(args) == 0 and count_calls == {"unlearn": 0, "evaluate": 2}
    again = sisa_forget_args(setup, model, out, "--subject", "s-b", "--check", KEEPS_UTILITY)
    with pytest.raises(
        pipeline.RequestError, match=r"\['s-b'\] were deleted from the SISA run .* Nothing was recorded"
    ):
        run_forget(again)
    with Ledger(out / "ledger.sqlite") as ledger:
        assert len(ledger.requests()) == 1


def test_a_sisa_request_refuses_a_recipe_and_other_data(setup, sisa_run, tmp_path):
    out = tmp_path / "requests"
    check = ["--subject", "s-a", "--check", PASSING]
    with pytest.raises(ValueError, match=r"is a SISA run: .* so --recipe does not apply"):
        run_forget(sisa_forget_args(setup, sisa_run, out, "--recipe", setup["recipe"], *check))
    other = tmp_path / "other.jsonl"
    other.write_text(Path(setup["data"]).read_text().replace("fact number 7", "fact number 8"))
    with pytest.raises(DataError, match=r"is not the data the SISA run .* was trained on"):
        run_forget(sisa_forget_args(setup, sisa_run, out, "--dataset", str(other), *check))
    with pytest.raises(ValueError, match=r"is not a SISA directory, so deletion requests need an unlearning --recipe"):
        run_forget(["--model_name_or_path", setup["model"], "--suite", setup["suite"], *check])
