"""Evaluation under 2 CPU processes (torchrun, gloo): `map_items` shares items out and restores their order, and
eval/run.py writes the eval.json of one process."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cpu_processes_env

from llm_unlearn.commands import evaluate
from llm_unlearn.evaluation.results import load_eval

ROOT = Path(__file__).resolve().parents[1]
# What may differ between a 1- and a 2-process run: how long the passes took and how many processes ran.
RUN_DEPENDENT = {"timing", "wall_time_s", "num_processes"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(script: Path | str, *args: str, cwd: Path) -> None:
    """Run `script` in 2 CPU processes with torchrun, as tests/test_recipes.py does."""
    env = cpu_processes_env()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(script), *args]  # fmt: skip
    subprocess.run(command, check=True, env=env, cwd=cwd)


MAP_ITEMS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch.distributed as dist

    # distributed.py is loaded by its path: the package's __init__ would import transformers in both processes,
    # and this test needs only torch.
    spec = importlib.util.spec_from_file_location("distributed", sys.argv[2])
    distributed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(distributed)

    dist.init_process_group("gloo")
    rank, size = distributed.world()
    # Each result says which rank computed it, so the test sees both the order and the sharing.
    results = {
        str(n): distributed.map_items(lambda part: [{"item": item, "rank": rank} for item in part], list(range(n)))
        for n in (0, 1, 4, 5)
    }
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as handle:
        json.dump({"world": [rank, size], "main": distributed.is_main_process(), "results": results}, handle)
    dist.destroy_process_group()
    """
)


@pytest.mark.distributed
def test_map_items_under_two_processes_restores_the_input_order(tmp_path):
    script = tmp_path / "map_items.py"
    script.write_text(MAP_ITEMS_SCRIPT)
    torchrun(script, str(tmp_path), str(ROOT / "llm_unlearn" / "evaluation" / "distributed.py"), cwd=tmp_path)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world"] for r in ranks] == [[0, 2], [1, 2]]
    assert [r["main"] for r in ranks] == [True, False]
    for n in (0, 1, 4, 5):
        # Every rank gets every result, in input order; rank r computed items r, r + 2, ...
        expected = [{"item": item, "rank": item % 2} for item in range(n)]
        assert ranks[0]["results"][str(n)] == expected
        assert ranks[1]["results"][str(n)] == expected


# A small version of eval/builtin.yaml that runs every pass the evaluator splits across processes: teacher
# forcing (with distribution statistics for Min-K%++), answer groups (truth ratio, multiple choice), greedy
# generation, gradient norms; and membership inference, utility and bootstrap intervals on the gathered items.
SUITE = {
    "suite": "distributed-test",
    "dataset": "builtin",
    "dataset_config": "num_people=4,num_holdout=2",
    "forget_subjects": ["person-0000"],
    "holdout_data": "builtin",
    "holdout_data_split": "holdout",
    "max_length": 96,
    # 3 items in batches of 2: the ranks get different numbers of items (2 and 1), and one process 2 batches.
    "batch_size": 2,
    "max_new_tokens": 8,
    "max_items": 3,
    "seed": 0,
    "splits": ["forget", "holdout", "retain", "world_facts"],
    "metrics": ["probability", "rouge_l_recall", "truth_ratio"],
    "split_options": {
        "forget": {"metrics": ["probability", "rouge_l_recall", "truth_ratio", "exact_memorization",
                               "extraction_strength"]},
        "holdout": {"metrics": ["probability"]},
        "world_facts": {"data": "builtin", "split": "world_facts",
                        "metrics": ["probability_mc", "rouge_l_recall", "truth_ratio"]},
    },
    "mia": {"members": "forget", "nonmembers": "holdout",
            "scores": ["loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm"]},
    "report": False,
}  # fmt: skip


def differences(one: Any, two: Any, path: str = "") -> list[str]:
    """Where two eval results differ: numbers beyond 1e-5 (relative, or absolute near 0), anything else at all."""
    if isinstance(one, dict) and isinstance(two, dict):
        found = (
            [f"{path}: keys {sorted(set(one) ^ set(two))} in only one run"] if set(one) != set(two) else []
        )
        for key in sorted(set(one) & set(two) - RUN_DEPENDENT):
            found += differences(one[key], two[key], f"{path}/{key}")
        return found
    if isinstance(one, list) and isinstance(two, list):
        if len(one) != len(two):
            return [f"{path}: {len(one)} entries against {len(two)}"]
        return [
            d
            for index, pair in enumerate(zip(one, two, strict=True))
            for d in differences(*pair, f"{path}[{index}]")
        ]
    numbers = (int, float)
    if isinstance(one, numbers) and isinstance(two, numbers) and not isinstance(one, bool):
        if math.isnan(one) and math.isnan(two):
            return []
        return (
            [] if math.isclose(one, two, rel_tol=1e-5, abs_tol=1e-5) else [f"{path}: {one!r} against {two!r}"]
        )
    return [] if one == two else [f"{path}: {one!r} against {two!r}"]


@pytest.mark.distributed
def test_eval_under_two_processes_writes_the_numbers_of_one(tiny_model_dir, tmp_path):
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump(SUITE))
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--config", str(config), "--model_name_or_path", tiny_model_dir]
    evaluate.main(*evaluate.make_parser().parse_args_and_config([*common, "--output_dir", str(one)]))
    torchrun(ROOT / "eval" / "run.py", *common, "--output_dir", str(two), cwd=tmp_path)
    single, double = (load_eval(path / "eval.json").to_dict() for path in (one, two))
    assert {split: result["num_items"] for split, result in double["splits"].items()} == {
        "forget": 3, "holdout": 3, "retain": 3, "world_facts": 3,
    }  # fmt: skip
    # The generations compared as text: the multi-process run must reproduce them exactly.
    for split in single["splits"]:
        assert [item["generation"] for item in double["splits"][split]["items"]] == [
            item["generation"] for item in single["splits"][split]["items"]
        ]
    assert differences(single, double) == []
    assert (single["num_processes"], double["num_processes"]) == (1, 2)


@pytest.mark.distributed
def test_unlearning_with_eval_under_two_processes_logs_the_numbers_of_one(tiny_model_dir, tmp_path):
    """The eval callback under torchrun: both ranks evaluate (and gather) at the same steps, one writes best/."""
    suite = {key: SUITE[key] for key in ("dataset", "dataset_config", "forget_subjects", "max_length", "batch_size",
                                          "max_new_tokens", "max_items", "seed")}  # fmt: skip
    config = tmp_path / "suite.yaml"
    config.write_text(
        yaml.safe_dump(
            {**suite, "splits": ["forget", "retain"], "metrics": ["probability", "rouge_l_recall"]}
        )
    )
    out = tmp_path / "ul"
    torchrun(
        ROOT / "recipes" / "unlearn.py",
        "--model_name_or_path", tiny_model_dir, "--dataset", "builtin", "--dataset_config", SUITE["dataset_config"],
        "--forget_subjects", "person-0000", "--max_length", "96", "--output_dir", str(out), "--report_to", "none",
        "--save_strategy", "no", "--disable_tqdm", "true", "--method", "grad_ascent", "--max_steps", "3",
        "--per_device_train_batch_size", "2", "--learning_rate", "0.05", "--eval_every_steps", "2",
        "--eval_config", str(config), "--best_metric", "forget/probability", "--greater_is_better", "false",
        cwd=tmp_path,
    )  # fmt: skip
    record = json.loads((out / "run.json").read_text())
    assert record["num_processes"] == 2
    assert record["eval_during_training"]["evaluated_steps"] == [0, 2, 3]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["step"] in (2, 3) and (out / "best" / "model.safetensors").is_file()
    # The numbers logged before training are those of the same model evaluated in one process.
    from llm_unlearn.evaluation.results import EvalResult
    from llm_unlearn.evaluation.runner import evaluate
    from llm_unlearn.evaluation.suite import Suite
    from llm_unlearn.models import load_model_and_tokenizer

    logged = next(entry for entry in record["log_history"] if "eval/forget/probability" in entry)
    assert logged["step"] == 0
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    expected = EvalResult(evaluate(model, tokenizer, Suite.from_yaml(config)))
    for split in ("forget", "retain"):
        for metric in ("probability", "rouge_l_recall"):
            mean = expected.mean(split, metric)
            assert logged[f"eval/{split}/{metric}"] == pytest.approx(mean, rel=1e-5, abs=1e-6)
