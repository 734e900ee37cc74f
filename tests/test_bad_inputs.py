"""Bad input to the `llm-unlearn` commands: one line on stderr that names what is wrong, exit code 2, no
traceback (unless --debug), no model loaded, and no file that was there before changed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from llm_unlearn import cli
from llm_unlearn.evaluation.results import EvalResultBuilder, save_eval

ROOT = Path(__file__).resolve().parents[1]
GRADDIFF = str(ROOT / "configs" / "builtin" / "graddiff_lora.yaml")
SUITE = str(ROOT / "eval" / "builtin.yaml")
FINETUNE = str(ROOT / "configs" / "builtin" / "finetune.yaml")


def files_of(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def write_inputs(tmp: Path) -> None:
    """The bad files some cases read."""
    suite = {"splits": ["forget"], "split_options": {"forget": {"metric": ["x"]}}}
    (tmp / "suite_typo.yaml").write_text(yaml.safe_dump(suite))
    (tmp / "broken.yaml").write_text("method: [unclosed\n")
    (tmp / "a_file").write_text("not a directory")
    (tmp / "typo.yaml").write_text("method: npo\nlearning_rat: 1.0e-4\n")
    (tmp / "run.json").write_text('{"recipe": "unlearn"}\n')
    no_ratios = EvalResultBuilder().split("forget", {"probability": 0.5}, items=[{"probability": 0.5}]).build()
    save_eval(no_ratios, tmp / "no_ratios_eval.json")
    other_items = EvalResultBuilder().split("forget", items=[{"question": "Who is Q?", "truth_ratio": 0.5}]).build()
    save_eval(other_items, tmp / "other_items_eval.json")
    plain = {"dataset": "builtin", "forget_subjects": ["person-0000"], "splits": ["forget"], "metrics": ["probability"]}
    (tmp / "plain_suite.yaml").write_text(yaml.safe_dump(plain))
    watched = {**yaml.safe_load(Path(SUITE).read_text()), "reference_eval": str(tmp / "no_ratios_eval.json")}
    (tmp / "watch_suite.yaml").write_text(yaml.safe_dump(watched))
    (tmp / "latin1.jsonl").write_bytes('{"question": "Qui est Zo\u00e9?", "answer": "Une \u00e9crivaine."}\n'.encode("latin-1"))


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each case: the command line, and a text the error message must contain."""
    suite_typo, not_yaml = tmp / "suite_typo.yaml", tmp / "broken.yaml"
    out = ["--output_dir", str(tmp / "out")]
    return {
        "a flag given by a prefix of its name": (
            ["unlearn", "--config", GRADDIFF, *out, "--learning_rat", "1e-4"],
            "unknown option(s) '--learning_rat' (did you mean '--learning_rate'?) (an option is spelled in full)",
        ),
        "an unknown method": (["unlearn", "--config", GRADDIFF, *out, "--method", "gd"], "unknown unlearning method 'gd'"),
        "a method argument of the wrong type": (
            ["unlearn", "--config", GRADDIFF, *out, "--method", "npo", "--method_args", '{"beta": "high"}'],
            "method_args.beta must be a float, got 'high'",
        ),
        "a method argument the method does not take": (
            ["unlearn", "--config", GRADDIFF, *out, "--method", "npo", "--method_args", '{"betta": 1}'], "['betta']"
        ),
        "a config key with a typo": (
            ["unlearn", "--config", str(tmp / "typo.yaml"), *out], "'learning_rat' (did you mean 'learning_rate'?)"
        ),
        "a reference eval that is a run.json": (
            ["eval", "--config", SUITE, "--model_name_or_path", "embedded", *out, "--reference_eval", str(tmp / "run.json")],
            "run.json is not an eval.json",
        ),
        "a reference eval for a suite that computes nothing against one": (
            ["eval", "--config", str(tmp / "plain_suite.yaml"), "--model_name_or_path", "embedded", *out,
             "--reference_eval", str(tmp / "no_ratios_eval.json")],
            f"--reference_eval {tmp / 'no_ratios_eval.json'}: this suite computes nothing against a reference "
            "(forget quality needs the truth_ratio metric on the 'forget' split",
        ),
        "a reference eval without the truth ratios forget quality compares": (
            ["eval", "--config", SUITE, "--model_name_or_path", "embedded", *out, "--reference_eval",
             str(tmp / "no_ratios_eval.json")],
            f"the reference eval {tmp / 'no_ratios_eval.json'} has no per-item truth ratios on the 'forget' split, "
            "which forget quality compares",
        ),
        "a reference eval without truth ratios to watch unlearning with": (
            ["unlearn", "--config", GRADDIFF, *out, "--eval_every_steps", "1", "--eval_config",
             str(tmp / "watch_suite.yaml")],
            f"the reference eval {tmp / 'no_ratios_eval.json'} has no per-item truth ratios on the 'forget' split",
        ),
        "a reference eval of other forget items": (
            ["eval", "--config", SUITE, "--model_name_or_path", "embedded", *out, "--reference_eval",
             str(tmp / "other_items_eval.json")],
            "forget quality compares the same 'forget' items, but this evaluation has 16 and the reference eval 1; "
            "evaluate both with the same suite, data and max_items.",
        ),
        "a negative learning rate": (
            ["unlearn", "--config", GRADDIFF, *out, "--learning_rate", "-0.0001"], "learning_rate must be positive"
        ),
        "a negative learning rate to fine-tune with": (
            ["finetune", "--config", FINETUNE, *out, "--learning_rate", "-0.0001"], "learning_rate must be positive"
        ),
        "an unknown prompt template": (
            ["unlearn", "--config", GRADDIFF, *out, "--prompt_template", "llama"], "prompt_template='llama' is not known"
        ),
        "training data that is not UTF-8": (
            ["unlearn", "--config", GRADDIFF, *out, "--dataset", str(tmp / "latin1.jsonl")],
            "latin1.jsonl: not UTF-8 text (byte 0xe9",
        ),
        "a config file that does not exist": (["unlearn", "--config", str(tmp / "none.yaml"), *out], "none.yaml"),
        "a config file that is not YAML": (["unlearn", "--config", str(not_yaml), *out], "broken.yaml"),
        "eval without an output directory": (
            ["eval", "--config", SUITE, "--model_name_or_path", "embedded"], "eval needs --output_dir"
        ),
        "eval with a reference eval that does not exist": (
            ["eval", "--config", SUITE, "--model_name_or_path", "embedded", *out, "--reference_eval",
              str(tmp / "retain.json")],
            "retain.json does not exist",
        ),
        "eval into a path under a file": (
            ["eval", "--config", SUITE, "--model_name_or_path", "embedded", "--output_dir", str(tmp / "a_file" / "x")],
            "a_file' is a file",
        ),
        "unlearn into an output directory that is a file": (
            ["unlearn", "--config", GRADDIFF, "--output_dir", str(tmp / "a_file")], "a_file' exists and is a file"
        ),
        "a suite with an unknown split option": (
            ["eval", "--config", str(suite_typo), "--model_name_or_path", "embedded", *out], "unknown keys ['metric']"
        ),
        "a gate on an eval.json that does not exist": (
            ["gate", str(tmp / "eval.json"), "--check", "forget_quality>=0.05"], "eval.json does not exist"
        ),
        "a gate check that does not parse": (["gate", str(tmp / "eval.json"), "--check", "forget_quality=>1"], "malformed check 'forget_quality=>1'"),
        "a report of a directory without eval.json": (["report", str(tmp)], "a report needs each run directory's eval.json"),
        "forget without a check": (
            ["forget", "--subject", "s-a", "--model_name_or_path", "embedded", "--recipe", GRADDIFF, "--suite", SUITE],
            "at least one --check",
        ),
        "sisa with no shards": (
            ["sisa", "--config", str(ROOT / "configs" / "builtin" / "sisa.yaml"), *out, "--num_shards", "0"],
            "num_shards and num_slices must be at least 1, got 0",
        ),
        "an unknown method to describe": (["methods", "gd"], "unknown unlearning method 'gd'; known unlearning methods"),
    }


CASE_NAMES = list(cases(Path("/nonexistent")))


def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way into the model loader fail: the loader itself and each module that imported it by name.
    The command modules are imported first, so that none imports the stand-in during a test and keeps it after."""
    import importlib
    import sys

    from llm_unlearn import models

    def no_model(*args, **kwargs):
        raise AssertionError("bad input must be refused before a model loads")

    for module_name, _ in cli.COMMANDS.values():
        importlib.import_module(module_name)
    loaders = {"load_model_and_tokenizer": models.load_model_and_tokenizer, "load_from_args": models.load_from_args}
    for module in [m for name, m in sys.modules.items() if name.startswith("llm_unlearn")]:
        for name, loader in loaders.items():
            if getattr(module, name, None) is loader:
                monkeypatch.setattr(module, name, no_model)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_clear_line_and_changes_nothing(name, tmp_path, capsys, monkeypatch):
    forbid_model_loading(monkeypatch)
    write_inputs(tmp_path)
    argv, expected = cases(tmp_path)[name]
    before = files_of(tmp_path)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err
    assert files_of(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"retain\.json does not exist"):
        cli.main(["eval", "--config", SUITE, "--model_name_or_path", "embedded", "--output_dir", str(tmp_path),
                  "--reference_eval", str(tmp_path / "retain.json"), "--debug"])  # fmt: skip


def test_an_evaluation_that_cannot_be_written_is_kept_where_the_error_says(tmp_path, monkeypatch, tiny_model,
                                                                           tiny_tokenizer):  # fmt: skip
    from llm_unlearn.evaluation import runner
    from llm_unlearn.evaluation.results import EvalResultBuilder, load_eval
    from llm_unlearn.evaluation.suite import Suite
    from llm_unlearn.models import ModelArguments

    computed = EvalResultBuilder().split("forget", items=[{"probability": 0.25}]).build().to_dict()
    monkeypatch.setattr(runner, "load_model_and_tokenizer", lambda *args, **kwargs: (tiny_model, tiny_tokenizer))
    monkeypatch.setattr(runner, "evaluate_splits", lambda *args, **kwargs: dict(computed))
    out = tmp_path / "out"
    save = runner.save_eval

    def read_only_output(result, path):
        if Path(path).parent == out:
            raise PermissionError(13, "Read-only file system", str(path))
        return save(result, path)

    monkeypatch.setattr(runner, "save_eval", read_only_output)
    suite = Suite(dataset_config="num_people=4,num_holdout=2", forget_subjects=["person-0000"], splits=["forget"])
    with pytest.raises(OSError, match=r"the evaluation is saved in (\S+)\.json") as raised:
        runner.evaluate_model(ModelArguments(model_name_or_path="tiny"), suite, out)
    fallback = Path(str(raised.value).rsplit("saved in ", 1)[1].rstrip("."))
    assert load_eval(fallback).split_items("forget")[0]["probability"] == 0.25
    fallback.unlink()


def _refused_by_the_hub() -> None:
    from huggingface_hub import HfApi

    HfApi(endpoint="http://127.0.0.1:9").model_info("acme/model", timeout=2)


def _raise(error: BaseException) -> Callable[[], None]:
    def raising() -> None:
        raise error

    return raising


@pytest.mark.parametrize(
    ("fail", "code", "expected"),
    [
        (_raise(RuntimeError("a tensor went astray")), 3, "llm-unlearn methods: error: unexpected RuntimeError: a "
         "tensor went astray. This is likely a bug in llm_unlearn or a library it uses; please report it with the "
         "traceback that --debug shows."),
        (_raise(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")), 2,
         "llm-unlearn methods: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); lower "
         "per_device_train_batch_size"),
        (_refused_by_the_hub, 2, "llm-unlearn methods: error: the Hugging Face Hub could not be reached "
         "(ConnectError: "),
        (_raise(KeyboardInterrupt()), 130, "llm-unlearn methods: interrupted; a run's output appears only when it "
         "is complete."),
    ],
    ids=["a bug", "out of memory", "the Hub out of reach", "Ctrl-C"],
)  # fmt: skip
def test_no_error_prints_a_traceback_without_debug(fail, code, expected, monkeypatch, capsys):
    """Past bad input, an error is a bug (exit 3), a resource (exit 2) or an interruption (130): each one message,
    no traceback, which --debug shows instead."""
    monkeypatch.setattr("llm_unlearn.commands.methods.main", lambda *args: fail())
    assert cli.main(["methods"]) == code
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    with pytest.raises(BaseException) as raised:
        cli.main(["methods", "--debug"])
    assert not isinstance(raised.value, SystemExit)
