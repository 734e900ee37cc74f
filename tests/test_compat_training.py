"""The bets the training side of llm_unlearn makes on transformers, trl and torch behaviour that no documented API
promises (docs/compatibility.md), checked against the installed releases: each failure names the library and its
version, the symbol, what changed, and where the project adapts to it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
from pathlib import Path

import pytest
import torch
import transformers
import trl
import yaml
from conftest import build_tiny_llama
from datasets import Dataset
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments
from trl import TrlParser

from llm_unlearn.commands import gate
from llm_unlearn.commands.arguments import OptionalPositional
from llm_unlearn.data.formatting import PaddingCollator, encode_qa
from llm_unlearn.methods.layers import _RUN_TO_END_WRAPPERS
from llm_unlearn.sisa.train import logger as sisa_logger
from llm_unlearn.sisa.train import rebuild_training_args, stage_arguments, training_args_record
from llm_unlearn.trainer import UnlearnConfig, UnlearnTrainer

TRANSFORMERS = f"transformers {transformers.__version__}"
TRL = f"trl {trl.__version__}"
TORCH = f"torch {torch.__version__}"


def adapt(path: str) -> str:
    """The closing words of every message here: where the project adapts to the change."""
    return f"adapt {path} and docs/compatibility.md"


# --- TR-3: Trainer.loss_is_scaled_for_ga ----------------------------------------------------------------------


def one_update(
    gradient_accumulation_steps: int, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> dict[str, torch.Tensor]:
    """The change of every weight after one optimizer step of grad_ascent (a per-example mean loss) on two
    examples, taken as 2 micro-batches of 1 or 1 batch of 2; plain SGD, no clipping, so the change is -lr * grad."""
    model = build_tiny_llama(tokenizer)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    # Two examples of the same length: no padding, so one batch of 2 sees exactly what two batches of 1 see.
    rows = [encode_qa(tokenizer, f"Question f{i}?", f"Answer f{i}.") for i in range(2)]
    assert len(rows[0]["input_ids"]) == len(rows[1]["input_ids"])
    args = UnlearnConfig(
        output_dir=str(tmp_path / f"ga{gradient_accumulation_steps}"), method="grad_ascent", report_to="none",
        per_device_train_batch_size=2 // gradient_accumulation_steps,
        gradient_accumulation_steps=gradient_accumulation_steps, max_steps=1, optim="sgd", learning_rate=0.5,
        lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = UnlearnTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
    )  # fmt: skip
    trainer.train()
    return {name: value - before[name] for name, value in model.state_dict().items()}


def test_loss_is_scaled_for_ga_false_makes_accumulated_steps_equal_one_big_batch(tiny_tokenizer, tmp_path):
    assert hasattr(Trainer, "loss_is_scaled_for_ga"), (
        f"{TRANSFORMERS}: Trainer.loss_is_scaled_for_ga is gone (added in 5.19.0); UnlearnTrainer sets it to False so "
        "that training_step divides its per-example-mean loss by gradient_accumulation_steps. Without it the "
        f"update grows with the accumulation steps: {adapt('llm_unlearn/trainer.py')}."
    )
    accumulated, whole = one_update(2, tiny_tokenizer, tmp_path), one_update(1, tiny_tokenizer, tmp_path)
    changed = [name for name, delta in whole.items() if delta.abs().max() > 0]
    assert changed, "one SGD step changed no weight; the comparison below would prove nothing"
    ratio = sum(accumulated[n].norm() for n in changed) / sum(whole[n].norm() for n in changed)
    for name in changed:
        assert torch.allclose(accumulated[name], whole[name], rtol=1e-4, atol=1e-7), (
            f"{TRANSFORMERS}: with Trainer.loss_is_scaled_for_ga = False, gradient_accumulation_steps=2 no longer "
            f"gives the update of one batch of 2 ({name}: size ratio {ratio:.3f}, 1 expected; 2 means "
            "training_step stopped dividing compute_loss's loss by the accumulation steps): "
            f"{adapt('llm_unlearn/trainer.py')}."
        )


# --- TR-7, TR-8, TR-11: the Trainer methods UnlearnTrainer overrides -------------------------------------------

# How Trainer calls each method (and how our overrides call super()): the argument shapes that must bind.
CALLS = {
    "compute_loss": [
        ("model", "inputs"),
        ("model", "inputs", {"num_items_in_batch": 4}),  # Trainer.training_step
        ("model", "inputs", {"return_outputs": True}),  # Trainer.prediction_step
    ],
    "training_step": [("model", "inputs", 4)],  # Trainer's loop and our super() call, positionally
    "log": [("logs",), ("logs", 0.0)],  # Trainer and our super() call
}


def parameter_shape(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_overridden_trainer_methods_keep_the_signature_our_overrides_have(name):
    theirs, ours = getattr(Trainer, name), getattr(UnlearnTrainer, name)
    assert ours is not theirs, f"UnlearnTrainer no longer overrides {name}; update this test"
    assert parameter_shape(theirs) == parameter_shape(ours), (
        f"{TRANSFORMERS}: Trainer.{name}{inspect.signature(theirs)} no longer matches UnlearnTrainer.{name}"
        f"{inspect.signature(ours)}; Trainer may now call it with arguments the override does not take: "
        f"{adapt('llm_unlearn/trainer.py')}."
    )
    for call in CALLS[name]:
        args = [a for a in call if not isinstance(a, dict)]
        kwargs = next((a for a in call if isinstance(a, dict)), {})
        try:
            inspect.signature(theirs).bind(None, *args, **kwargs)
        except TypeError as error:
            pytest.fail(
                f"{TRANSFORMERS}: Trainer.{name}{inspect.signature(theirs)} no longer binds the call "
                f"{name}({', '.join(map(repr, args))}, **{kwargs}) ({error}): {adapt('llm_unlearn/trainer.py')}."
            )


# --- TR-15, TR-16: TrainingArguments rebuilt by dataclasses.replace and from to_dict() (sisa/train.py) ----------


def training_args(tmp_path: Path) -> TrainingArguments:
    """TrainingArguments with non-default values in fields that __post_init__ converts or checks."""
    return TrainingArguments(
        output_dir=str(tmp_path / "run"), report_to="none", lr_scheduler_type="cosine",
        lr_scheduler_kwargs={"num_cycles": 0.25}, learning_rate=3e-4, warmup_steps=2, weight_decay=0.1,
        optim="sgd", gradient_accumulation_steps=2, per_device_train_batch_size=3, max_grad_norm=0.5, seed=7,
        logging_steps=3, save_strategy="steps", save_steps=5, dataloader_drop_last=True,
    )  # fmt: skip


def test_dataclasses_replace_on_training_arguments_keeps_every_other_field(tmp_path):
    args = training_args(tmp_path)
    stage = stage_arguments(args, tmp_path / "stage", 2.0)
    changed = {"output_dir", "num_train_epochs", "save_strategy"}
    before, after = args.to_dict(), stage.to_dict()
    assert (after["output_dir"], after["num_train_epochs"], after["save_strategy"]) == (
        str(tmp_path / "stage"),
        2.0,
        "no",
    )
    differ = {
        key: (before[key], after.get(key))
        for key in before
        if key not in changed and before[key] != after.get(key)
    }
    assert not differ and set(before) == set(after), (
        f"{TRANSFORMERS}: dataclasses.replace(TrainingArguments, ...), which re-runs __post_init__ on processed "
        f"values, changed fields it was not asked to: {differ}: {adapt('llm_unlearn/sisa/train.py')}."
    )


def test_training_arguments_round_trip_through_sisa_json_keeps_every_field(tmp_path, caplog):
    args = training_args(tmp_path)
    record = json.loads(json.dumps(training_args_record(args)))  # as sisa.json stores it
    with caplog.at_level(logging.WARNING, logger=sisa_logger.name):
        rebuilt = rebuild_training_args(record)
    assert not caplog.records, (
        f"a field of {TRANSFORMERS}'s own to_dict() was reported as dropped: {caplog.text}"
    )
    before, after = args.to_dict(), rebuilt.to_dict()
    differ = {
        key: (before[key], after.get(key))
        for key in before
        if not key.endswith("_token") and before[key] != after.get(key)
    }
    assert not differ, (
        f"{TRANSFORMERS}: TrainingArguments(**to_dict()) (the sisa.json round trip) does not give back the same "
        f"arguments: {differ}; a deletion would retrain shards differently: {adapt('llm_unlearn/sisa/train.py')}."
    )


def test_a_recorded_training_argument_the_running_transformers_lacks_is_reported(tmp_path, caplog):
    record = {**training_args_record(training_args(tmp_path)), "an_old_field": 1}
    with caplog.at_level(logging.WARNING, logger=sisa_logger.name):
        rebuilt = rebuild_training_args(record)
    assert rebuilt.seed == 7
    assert "an_old_field" in caplog.text and transformers.__version__ in caplog.text


def test_dataclass_fields_of_training_arguments_are_what_to_dict_writes(tmp_path):
    """to_dict() writes the init fields, which rebuild_training_args accepts back (TR-16's premise)."""
    names = {item.name for item in dataclasses.fields(TrainingArguments) if item.init}
    written = set(training_args(tmp_path).to_dict())
    assert written == names, (
        f"{TRANSFORMERS}: TrainingArguments.to_dict() no longer writes exactly the init fields (extra "
        f"{sorted(written - names)}, missing {sorted(names - written)}): {adapt('llm_unlearn/sisa/train.py')}."
    )


# --- TO-2, TO-3: torch wrappers that methods/layers.py relies on -----------------------------------------------


def test_ddp_post_forward_exists_and_takes_the_output():
    method = getattr(DistributedDataParallel, "_post_forward", None)
    assert callable(method) and list(inspect.signature(method).parameters) == ["self", "output"], (
        f"{TORCH}: DistributedDataParallel._post_forward(self, output) is gone or takes other arguments; "
        "capture_layer_output calls it to arm DDP's gradient all-reduce after stopping the forward early. Run "
        "the forward to the end under DDP instead (add it to _RUN_TO_END_WRAPPERS): "
        f"{adapt('llm_unlearn/methods/layers.py')}."
    )
    # What it must still do: the bookkeeping DDP.forward does after the module's forward.
    assert "_post_forward" in inspect.getsource(DistributedDataParallel.forward), (
        f"{TORCH}: DistributedDataParallel.forward no longer calls _post_forward, so calling it ourselves may not "
        f"be what DDP does after a forward: {adapt('llm_unlearn/methods/layers.py')}."
    )
    assert "prepare_for_backward" in inspect.getsource(method), (
        f"{TORCH}: DistributedDataParallel._post_forward no longer prepares the reducer for backward: "
        f"{adapt('llm_unlearn/methods/layers.py')}."
    )


@pytest.mark.parametrize("name", ["FullyShardedDataParallel", "FSDPModule"])
def test_the_fsdp_class_names_matched_by_layers_still_exist(name):
    import torch.distributed.fsdp as fsdp

    assert name in _RUN_TO_END_WRAPPERS
    assert inspect.isclass(getattr(fsdp, name, None)) and getattr(fsdp, name).__name__ == name, (
        f"{TORCH}: torch.distributed.fsdp.{name} is gone or renamed; capture_layer_output matches wrappers by class "
        "name and would abort a sharded forward, leaving the gathered weights in a broken state: "
        f"{adapt('llm_unlearn/methods/layers.py')}."
    )


def test_a_fully_sharded_module_carries_a_matched_class_name():
    """FSDP2's fully_shard swaps the module's class for a subclass of FSDPModule; the name match must see it."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        module = torch.nn.Sequential(torch.nn.Linear(4, 4))
        fully_shard(module, mesh=init_device_mesh("cpu", (1,)))
        names = {cls.__name__ for cls in type(module).__mro__}
    finally:
        dist.destroy_process_group()
    assert _RUN_TO_END_WRAPPERS & names, (
        f"{TORCH}: a module after fully_shard has none of {sorted(_RUN_TO_END_WRAPPERS)} among its classes "
        f"({sorted(names)}): {adapt('llm_unlearn/methods/layers.py')}."
    )


def test_the_deepspeed_engine_class_name_matched_by_layers_still_exists():
    deepspeed = pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    from deepspeed.runtime.engine import DeepSpeedEngine

    assert DeepSpeedEngine.__name__ in _RUN_TO_END_WRAPPERS, (
        f"deepspeed {deepspeed.__version__}: the engine class is now {DeepSpeedEngine.__name__}: "
        f"{adapt('llm_unlearn/methods/layers.py')}."
    )


# --- TR-17: TrlParser.set_defaults_with_config and commands.arguments.OptionalPositional --------------------------------------


def test_set_defaults_with_config_sets_the_default_of_every_action_with_that_dest():
    parser = TrlParser([gate.GateArguments])
    positional = parser.add_argument("eval_json", nargs="?", action=OptionalPositional)
    flag = next(action for action in parser._actions if "--eval_json" in action.option_strings)
    method = getattr(TrlParser, "set_defaults_with_config", None)
    assert callable(method), (
        f"{TRL}: TrlParser.set_defaults_with_config is gone; commands.arguments.OptionalPositional assumes the YAML of --config "
        f"becomes action defaults: {adapt('llm_unlearn/commands/arguments.py')}."
    )
    parser.set_defaults_with_config(eval_json="from_yaml.json")
    assert flag.default == "from_yaml.json", (
        f"{TRL}: TrlParser.set_defaults_with_config no longer sets .default on the action whose dest is a config "
        f"key (--eval_json's default is {flag.default!r}): {adapt('llm_unlearn/commands/arguments.py')}."
    )
    # Our property ignores the assignment, so an absent positional does not overwrite the flag's value.
    assert positional.default is argparse.SUPPRESS


def test_a_positional_given_on_the_command_line_beats_the_config_and_an_absent_one_keeps_it(tmp_path):
    config = tmp_path / "gate.yaml"
    config.write_text(yaml.safe_dump({"eval_json": "from_yaml.json", "checks": ["forget/probability<0.5"]}))
    parser = gate.make_parser(prog="gate")
    (from_config,) = parser.parse_args_and_config(["--config", str(config)])
    (from_command_line,) = parser.parse_args_and_config(["given.json", "--config", str(config)])
    assert (from_config.eval_json, from_command_line.eval_json) == ("from_yaml.json", "given.json"), (
        f"{TRL}: with TrlParser.parse_args_and_config, EVAL_JSON from the command line and from --config now give "
        f"{from_command_line.eval_json!r} and {from_config.eval_json!r}; commands.arguments.OptionalPositional relied on "
        f"set_defaults_with_config setting action defaults: {adapt('llm_unlearn/commands/arguments.py')}."
    )
