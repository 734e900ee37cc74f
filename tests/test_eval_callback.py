"""Evaluation during unlearning: the schedule, the logged numbers, best-checkpoint selection in both directions,
clear errors for bad settings, and the unlearn recipe keeping a loadable best model in best/."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate import DistributedType
from datasets import Dataset
from transformers import TrainerCallback

from llm_unlearn.commands import unlearn
from llm_unlearn.data.formatting import PaddingCollator, tokenize_views
from llm_unlearn.evaluation import EvalConfig, EvalResult, evaluate_splits
from llm_unlearn.evaluation import callback as callback_module
from llm_unlearn.evaluation.callback import UnlearningEvalCallback
from llm_unlearn.evaluation.results import EvalResultBuilder, load_eval
from llm_unlearn.evaluation.runner import evaluate
from llm_unlearn.evaluation.suite import Suite
from llm_unlearn.models import load_model_and_tokenizer
from llm_unlearn.trainer import UnlearnConfig, UnlearnTrainer

QA = [
    {"question": f"What is fact {k} about person s-a?", "answer": f"Fact number {k * 7}."} for k in range(4)
]


def make_trainer(model, tokenizer, output_dir: Path, max_steps: int = 5) -> UnlearnTrainer:
    args = UnlearnConfig(
        output_dir=str(output_dir), method="grad_ascent", max_steps=max_steps, per_device_train_batch_size=2,
        learning_rate=1e-3, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    forget, _ = tokenize_views(Dataset.from_list(QA), tokenizer, {}, max_length=64)
    return UnlearnTrainer(
        model=model, args=args, train_dataset=forget,
        data_collator=PaddingCollator(tokenizer.pad_token_id), processing_class=tokenizer,
    )  # fmt: skip


class ScriptedEval:
    """Stands in for `evaluate_splits`: returns the next of `values` as both forget/probability and forget
    quality, and records the training step and the model's mode at each call."""

    def __init__(self, trainer: UnlearnTrainer, values: list[float]) -> None:
        self.trainer = trainer
        self.values = list(values)
        self.steps: list[int] = []
        self.training_during_eval: list[bool] = []

    def __call__(self, model, tokenizer, splits, config, reference=None) -> dict:
        self.steps.append(self.trainer.state.global_step)
        self.training_during_eval.append(model.training)
        value = self.values.pop(0)
        return (
            EvalResultBuilder()
            .split("forget", {"probability": value}, num_items=4)
            .summary("forget_quality", value)
            .summary("privleak", None, reason="no reference eval given")
            .build()
            .to_dict()
        )


class BestRecorder(TrainerCallback):
    """After every step and at the end of training: the step recorded in best/best.json (None before one)."""

    def __init__(self, best_dir: Path) -> None:
        self.best_dir = best_dir
        self.trace: list[int | None] = []

    def _record(self) -> None:
        path = self.best_dir / "best.json"
        self.trace.append(json.loads(path.read_text())["step"] if path.is_file() else None)

    def on_step_end(self, args, state, control, **kwargs):
        self._record()

    def on_train_end(self, args, state, control, **kwargs):
        self._record()


def run_scripted(monkeypatch, trainer, values, **callback_kwargs) -> tuple[ScriptedEval, BestRecorder]:
    scripted = ScriptedEval(trainer, values)
    monkeypatch.setattr(callback_module, "evaluate_splits", scripted)
    callback = UnlearningEvalCallback(
        trainer, {"forget": Dataset.from_list(QA)}, EvalConfig(metrics=("probability",)), **callback_kwargs
    )
    recorder = BestRecorder(callback.best_dir)
    trainer.add_callback(callback)
    trainer.add_callback(recorder)
    trainer.train()
    return scripted, recorder


def test_evaluates_before_training_every_n_steps_and_at_the_end_and_logs(
    monkeypatch, tiny_model, tiny_tokenizer, tmp_path
):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path / "out", max_steps=5)
    scripted, _ = run_scripted(monkeypatch, trainer, [0.9, 0.8, 0.7, 0.6], eval_every_steps=2)
    assert scripted.steps == [0, 2, 4, 5]
    assert scripted.training_during_eval == [False] * 4
    assert trainer.model.training
    logged = [entry for entry in trainer.state.log_history if "eval/forget/probability" in entry]
    assert [entry["step"] for entry in logged] == [0, 2, 4, 5]
    assert [entry["eval/forget/probability"] for entry in logged] == [0.9, 0.8, 0.7, 0.6]
    assert [entry["eval/summary/forget_quality"] for entry in logged] == [0.9, 0.8, 0.7, 0.6]
    # A number that was not computed (null) is not logged.
    assert not any("eval/summary/privleak" in entry for entry in logged)
    # Without best_metric nothing is saved.
    assert not (tmp_path / "out" / "best").exists()


@pytest.mark.parametrize(
    ("best_metric", "greater_is_better", "max_steps", "values", "trace", "best_step", "best_value"),
    [
        # Evaluations at steps 0, 2, 4 and 5 (the end). Step 0 (before unlearning) is logged but never a
        # candidate, even with the highest value.
        ("forget_quality", True, 5, [0.99, 0.2, 0.5, 0.3], [None, 2, 2, 4, 4, 4], 4, 0.5),
        # Evaluations at steps 0, 2, 4 and 6, none extra at the end.
        ("forget/probability", False, 6, [0.01, 0.5, 0.6, 0.4], [None, 2, 2, 2, 2, 6, 6], 6, 0.4),
    ],
)
def test_best_is_saved_only_when_the_metric_improves(
    monkeypatch, tiny_model, tiny_tokenizer, tmp_path, best_metric, greater_is_better, max_steps, values, trace,
    best_step, best_value,
):  # fmt: skip
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path / "out", max_steps=max_steps)
    _, recorder = run_scripted(
        monkeypatch,
        trainer,
        values,
        eval_every_steps=2,
        best_metric=best_metric,
        greater_is_better=greater_is_better,
    )
    assert recorder.trace == trace
    best = tmp_path / "out" / "best"
    record = json.loads((best / "best.json").read_text())
    assert record["step"] == best_step and record["metric"] == best_metric
    assert record["value"] == best_value and record["greater_is_better"] is greater_is_better
    assert record["logged"]["eval/forget/probability"] == best_value
    assert load_eval(best / "eval.json").summary_value("forget_quality") == best_value
    assert (best / "model.safetensors").is_file() and (best / "tokenizer.json").is_file()
    # The swap into place leaves no staging directory behind.
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["best"]


def test_unknown_or_uncomputed_best_metric_fails_before_the_first_step(
    monkeypatch, tiny_model, tiny_tokenizer, tmp_path
):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path / "a")
    with pytest.raises(
        ValueError,
        match=r"best_metric 'forget/prob' is not a number this eval reports; choose one of "
        r"\['forget/probability', 'forget_quality', 'privleak'\]",
    ):
        run_scripted(
            monkeypatch,
            trainer,
            [0.5],
            eval_every_steps=2,
            best_metric="forget/prob",
            greater_is_better=False,
        )
    assert trainer.state.global_step == 0
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path / "b")
    with pytest.raises(ValueError, match=r"'privleak' has no value .* \(no reference eval given\)"):
        run_scripted(
            monkeypatch, trainer, [0.5], eval_every_steps=2, best_metric="privleak", greater_is_better=True
        )
    assert trainer.state.global_step == 0


def test_settings_errors_name_what_is_missing(tiny_model, tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path / "out")
    splits, config = {"forget": Dataset.from_list(QA)}, EvalConfig(metrics=("probability",))
    with pytest.raises(ValueError, match=r"best_metric 'forget_quality' needs greater_is_better: true when"):
        UnlearningEvalCallback(trainer, splits, config, eval_every_steps=2, best_metric="forget_quality")
    with pytest.raises(ValueError, match=r"eval_every_steps must be at least 1, got 0"):
        UnlearningEvalCallback(trainer, splits, config, eval_every_steps=0)
    with pytest.raises(ValueError, match=r"eval_every_steps needs eval_config"):
        UnlearnConfig(output_dir=str(tmp_path), eval_every_steps=2)
    with pytest.raises(FileNotFoundError, match=r"eval_config 'nope.yaml' does not exist"):
        UnlearnConfig(output_dir=str(tmp_path), eval_every_steps=2, eval_config="nope.yaml")
    with pytest.raises(ValueError, match=r"take effect with eval_every_steps"):
        UnlearnConfig(output_dir=str(tmp_path), best_metric="forget_quality")


def fake_accelerator(distributed_type: DistributedType, zero_stage: int | None = None) -> SimpleNamespace:
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(distributed_type=distributed_type, state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize(
    ("distributed_type", "zero_stage", "sharded"),
    [
        (DistributedType.NO, None, False),
        (DistributedType.MULTI_GPU, None, False),
        (DistributedType.DEEPSPEED, 2, False),
        (DistributedType.DEEPSPEED, 3, True),
        (DistributedType.FSDP, None, True),
    ],
)
def test_sharded_training_is_refused_and_data_parallel_training_is_not(
    monkeypatch, tiny_model, tiny_tokenizer, tmp_path, distributed_type, zero_stage, sharded
):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path / "out")
    assert not callback_module.is_sharded(trainer.accelerator)  # this process: no distributed training
    monkeypatch.setattr(trainer, "accelerator", fake_accelerator(distributed_type, zero_stage))
    assert callback_module.is_sharded(trainer.accelerator) is sharded
    splits, config = {"forget": Dataset.from_list(QA)}, EvalConfig(metrics=("probability",))
    if sharded:
        with pytest.raises(ValueError, match=r"does not support FSDP or DeepSpeed ZeRO-3; use DDP or ZeRO-2"):
            UnlearningEvalCallback(trainer, splits, config, eval_every_steps=2)
    else:
        UnlearningEvalCallback(trainer, splits, config, eval_every_steps=2)


def test_real_evaluation_leaves_train_mode_and_gradients_untouched(tiny_model, tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path / "out")
    splits = {"forget": Dataset.from_list(QA[:2]), "retain": Dataset.from_list(QA[2:])}
    config = EvalConfig(metrics=("probability", "rouge_l_recall"), max_new_tokens=4, max_length=64)
    callback = UnlearningEvalCallback(trainer, splits, config, eval_every_steps=1)
    model = trainer.model.train()
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    grads = [parameter.grad.clone() for parameter in model.parameters()]
    result = callback.evaluate(step=3)
    assert model.training
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    expected = EvalResult(evaluate_splits(model.eval(), tiny_tokenizer, splits, config))
    mean = expected.mean("retain", "probability")
    assert result.mean("retain", "probability") == pytest.approx(mean, rel=1e-6)
    logged = trainer.state.log_history[-1]
    assert logged["eval/retain/probability"] == pytest.approx(mean, rel=1e-6)
    assert logged["eval/forget/rouge_l_recall"] == expected.mean("forget", "rouge_l_recall")


@pytest.fixture
def qa_file(tmp_path) -> str:
    rows = [
        {"question": f"What is fact {k} about person {s}?", "answer": f"Person {s} has fact number {k * 7 + i}.",
         "subject_id": s}
        for i, s in enumerate(["s-a", "s-b", "s-c"])
        for k in range(4)
    ]  # fmt: skip
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_unlearn_recipe_keeps_a_loadable_best_adapter(tiny_model_dir, qa_file, tmp_path):
    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(
        yaml.safe_dump(
            {"dataset": qa_file, "forget_subjects": ["s-a"], "splits": ["forget", "retain"],
             "metrics": ["probability"], "max_length": 64, "batch_size": 8, "max_items": 6, "seed": 0}
        )
    )  # fmt: skip
    out = tmp_path / "ul"
    args = [
        "--model_name_or_path", tiny_model_dir, "--dataset", qa_file, "--forget_subjects", "s-a",
        "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
        "--disable_tqdm", "true", "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
        "--method", "grad_ascent", "--learning_rate", "0.05", "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--max_length", "64", "--eval_every_steps", "2", "--eval_config", str(eval_config),
        "--best_metric", "retain/probability", "--greater_is_better", "true",
    ]  # fmt: skip
    out = unlearn.main(*unlearn.make_parser().parse_args_and_config(args))
    record = json.loads((out / "run.json").read_text())
    report = record["eval_during_training"]
    assert report["evaluated_steps"] == [0, 2, 4]
    logged = {entry["step"]: entry["eval/retain/probability"] for entry in record["log_history"]
              if "eval/retain/probability" in entry}  # fmt: skip
    assert sorted(logged) == [0, 2, 4]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["value"] == max(logged[2], logged[4]) and best["step"] == report["best"]["step"]
    assert report["best"]["dir"] == "best" and report["final"]["step"] == 4
    assert (out / "best" / "adapter_model.safetensors").is_file()
    # best/ is the model of the recorded step: evaluated again it gives the recorded number.
    model, tokenizer = load_model_and_tokenizer(str(out / "best"))
    again = evaluate(model, tokenizer, Suite.from_yaml(eval_config))
    assert again["splits"]["retain"]["aggregates"]["probability"]["mean"] == pytest.approx(
        best["value"], rel=1e-4
    )
