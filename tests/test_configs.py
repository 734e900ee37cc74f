"""Every shipped recipe config parses with its recipe's parser, and the demo's checks and table are right."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_unlearn import demo
from llm_unlearn.commands import evaluate, finetune, sisa, unlearn
from llm_unlearn.config_files import load_arguments
from llm_unlearn.finetune import FINETUNE_ARGUMENTS
from llm_unlearn.methods import METHODS
from llm_unlearn.sisa.train import data_source, load_training_data
from llm_unlearn.unlearn import UNLEARN_ARGUMENTS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe_for(path: Path):
    if path.stem.startswith("sisa"):
        return sisa
    if path.stem.startswith("finetune"):
        return finetune
    if path.stem.startswith("eval"):
        return evaluate
    return unlearn


@pytest.mark.parametrize("path", sorted((CONFIGS / "builtin").glob("*.yaml")), ids=lambda p: p.name)
def test_builtin_configs_parse_and_select_data(path, tmp_path):
    module = recipe_for(path)
    extra = ["--model_name_or_path", "embedded"] if module is evaluate else []
    parsed = module.make_parser().parse_args_and_config(
        ["--config", str(path), "--output_dir", str(tmp_path), *extra]
    )
    data_args = parsed[0]
    if module is sisa:
        # SISA trains on every subject (no forget selection): the 10 people's 80 examples.
        assert len(load_training_data(data_source(data_args))) == 80
        return
    split = data_args.load_split()
    assert len(split.forget) == 16 and len(split.retain) == 64 and len(split.holdout) == 32
    if module is unlearn:
        assert parsed[1].method in path.stem.replace("_lora", "").replace("_full", "")


@pytest.mark.parametrize("path", sorted((CONFIGS / "tofu").glob("*.yaml")), ids=lambda p: p.name)
def test_tofu_configs_parse_with_hub_data_and_their_method(path, tmp_path):
    assert yaml.safe_load(path.read_text())["bf16"] is True
    # bf16 is refused on a machine without a GPU, so the parse here turns it off.
    script_args, training_args, model_args = (
        recipe_for(path)
        .make_parser()
        .parse_args_and_config(["--config", str(path), "--output_dir", str(tmp_path), "--bf16", "false"])
    )
    assert script_args.dataset == "locuslab/TOFU" and script_args.forget_data_config == "forget10"
    if path.stem == "finetune":
        assert model_args.model_name_or_path == "meta-llama/Llama-3.2-1B-Instruct"
    else:
        assert training_args.method == path.stem
        assert model_args.model_name_or_path.startswith("open-unlearning/tofu_Llama-3.2-1B")


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_yaml_mappings(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in {"NO", "MULTI_GPU", "FSDP", "DEEPSPEED"}
    assert isinstance(config["num_processes"], int)


def test_demo_has_a_config_for_each_mode():
    for mode in demo.MODES:
        assert demo.DemoArguments(mode=mode).unlearn_config("graddiff").is_file()
    assert demo.DemoArguments(methods=["all"]).method_names() == sorted(METHODS)
    with pytest.raises(ValueError, match="unknown unlearning method 'gd'"):
        demo.DemoArguments(methods=["npo", "gd"])
    with pytest.raises(ValueError, match="mode='half' is not known"):
        demo.DemoArguments(mode="half")


def test_forgetting_checks_use_ratios_to_the_target():
    rows = {
        "target": {"forget/probability": 0.8, "retain/probability": 0.5},
        "unlearned": {"forget/probability": 0.4, "retain/probability": 0.41},
    }
    checks = demo.check_forgetting(rows["target"], rows["unlearned"])
    assert checks["forget_probability_ratio"] == pytest.approx(0.5) and checks["forget_passed"]
    assert checks["retain_probability_change"] == pytest.approx(0.18) and checks["retain_passed"]
    rows["unlearned"] = {"forget/probability": 0.41, "retain/probability": 0.39}
    checks = demo.check_forgetting(rows["target"], rows["unlearned"])
    assert not checks["forget_passed"] and not checks["retain_passed"]


def test_table_has_a_row_per_model_and_phase_times():
    rows = {"target": {"forget/probability": 0.7, "retain/rouge_l_recall": 0.5}, "unlearned": {}}
    table = demo.format_table(rows, {"unlearn": 12.34}, seconds={"unlearned": 12.34})
    lines = table.splitlines()
    assert "forget prob" in lines[0] and "retain ROUGE-L" in lines[0] and "train s" in lines[0]
    assert lines[2].split() == ["target", "0.7000", "0.5000"]
    assert lines[3].split() == ["unlearned", "nan", "nan", "12.3"]
    assert "unlearn 12.3" in table


@pytest.mark.parametrize(
    "path", [p for p in sorted((CONFIGS / "builtin").glob("*.yaml")) if not p.stem.startswith("sisa")],
    ids=lambda p: p.name,
)
def test_the_library_reads_a_config_as_the_command_parses_it(path, tmp_path):
    """The demo and the deletion pipeline read recipe YAMLs with `load_arguments`, the commands with TrlParser:
    the two give equal arguments, so a recipe run from Python is the recipe run from the command line."""
    from dataclasses import asdict

    module = recipe_for(path)
    types = FINETUNE_ARGUMENTS if module is finetune else UNLEARN_ARGUMENTS
    loaded = load_arguments(types, path, output_dir=str(tmp_path))
    parsed = module.make_parser().parse_args_and_config(["--config", str(path), "--output_dir", str(tmp_path)])
    for expected, got in zip(loaded, parsed, strict=True):
        assert isinstance(got, type(expected))
        got_fields = asdict(got)
        assert {key: got_fields[key] for key in asdict(expected)} == asdict(expected)


UNLEARN_CONFIGS = sorted(
    p for p in (CONFIGS / "builtin").glob("*_*.yaml") if p.stem.endswith(("_lora", "_full"))
)


def test_every_method_has_a_config_in_both_modes():
    from llm_unlearn.methods import METHODS

    shipped = {path.stem for path in UNLEARN_CONFIGS}
    assert shipped == {f"{method}_{mode}" for method in METHODS for mode in ("lora", "full")}


@pytest.mark.parametrize("path", UNLEARN_CONFIGS, ids=lambda p: p.stem)
def test_every_unlearn_config_trains_a_step(path, tiny_model_dir, tmp_path):
    """The shipped config itself (data, method, mode, hyperparameters) runs; only the model and length change."""
    import json

    extra = ["--method_args", '{"layer": 1}'] if path.stem.startswith("rmu") else []
    args = ["--config", str(path), "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "out"),
            "--max_steps", "1", "--disable_tqdm", "true", *extra]  # fmt: skip
    out = unlearn.main(*unlearn.make_parser().parse_args_and_config(args))
    record = json.loads((out / "run.json").read_text())
    assert record["mode"] == path.stem.rpartition("_")[2]
    assert record["method"] == path.stem.rpartition("_")[0]
    assert record["data"]["forget"]["num_examples"] == 16
