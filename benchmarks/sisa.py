"""SISA against retraining and against one adapter: the cost of deleting a subject as a fraction of training
every shard (target about 1/k) and of retraining a single adapter without the subject, and the utility of the
shard ensemble against a single LoRA adapter trained on all the data with the same per-example budget, before
and after the deletion (with the single adapter retrained without the subject as the never-trained level).

    python benchmarks/sisa.py [--model embedded] [--num_shards 4] [--num_slices 2] [--subject person-0000]

Both models train with the settings of configs/builtin/sisa.yaml (the single adapter with configs/builtin/
finetune.yaml, which has the same learning rate, LoRA and epochs): every example gets num_train_epochs epochs,
or on average as many in SISA's slice stages (2e/(r+1) epochs per stage). Costs are optimizer steps and the
seconds of the training loops (model loading excluded); utility is the mean answer probability and ROUGE-L
recall of greedy answers (`evaluate_splits`) on the deleted subject's items (forget) and on items of the other
subjects (retain). Absolute seconds depend on the machine, and on a shared machine on its load while each
part ran: the optimizer steps are the stable measure of cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SISA_CONFIG = ROOT / "configs" / "builtin" / "sisa.yaml"
FINETUNE_CONFIG = ROOT / "configs" / "builtin" / "finetune.yaml"
METRICS = ("probability", "rouge_l_recall")


def evaluate(model, tokenizer, splits, max_new_tokens: int) -> dict[str, float]:
    """Mean probability and ROUGE-L recall on each split, as `split/metric`."""
    from llm_unlearn.evaluation import EvalConfig, evaluate_splits
    from llm_unlearn.evaluation.results import EvalResult

    config = EvalConfig(metrics=METRICS, batch_size=16, max_new_tokens=max_new_tokens, max_length=128)
    result = EvalResult(evaluate_splits(model, tokenizer, splits, config))
    return {f"{split}/{metric}": result.mean(split, metric) for split in splits for metric in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--num_slices", type=int, default=2)
    parser.add_argument("--subject", default="person-0000", help="The subject whose deletion is measured.")
    parser.add_argument("--retain_items", type=int, default=16, help="Items of other subjects to evaluate.")
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument(
        "--output_dir", default=None, help="Where the runs go (default: a temporary directory)."
    )
    args = parser.parse_args()

    from llm_unlearn.config_files import load_arguments
    from llm_unlearn.data.loading import load_records
    from llm_unlearn.finetune import FINETUNE_ARGUMENTS, finetune
    from llm_unlearn.models import load_model_and_tokenizer
    from llm_unlearn.sisa.delete import delete
    from llm_unlearn.sisa.train import SISA_ARGUMENTS, train

    out = Path(args.output_dir or tempfile.mkdtemp(prefix="llm_unlearn_sisa_bench."))
    common = {"model_name_or_path": args.model, "disable_tqdm": True}

    started = time.perf_counter()
    sisa_args, training_args, model_args = load_arguments(
        SISA_ARGUMENTS, SISA_CONFIG, **common, output_dir=str(out / "sisa"), num_shards=args.num_shards,
        num_slices=args.num_slices,
    )  # fmt: skip
    sisa_dir = train(sisa_args, training_args, model_args, num_shards=args.num_shards,
                     num_slices=args.num_slices, overwrite=True)  # fmt: skip
    sisa_wall = time.perf_counter() - started
    record = json.loads((sisa_dir / "sisa.json").read_text())
    place = record["subjects"][args.subject]
    # The single adapter on all the data, and retrained without the subject (the exact deletion without SISA).
    singles = {}
    for name, train_on in (
        ("single adapter (all data)", "all"),
        (f"single adapter without {args.subject}", "retain"),
    ):
        started = time.perf_counter()
        data_args, training_args, model_args = load_arguments(
            FINETUNE_ARGUMENTS, FINETUNE_CONFIG, **common, output_dir=str(out / f"single-{train_on}"),
            forget_subjects=[args.subject], train_on=train_on,
        )  # fmt: skip
        single_dir = finetune(model_args, data_args, training_args, overwrite=True)
        run = json.loads((single_dir / "run.json").read_text())
        cost = (
            run["log_history"][-1]["step"],
            run["train_metrics"]["train_runtime"],
            time.perf_counter() - started,
        )
        singles[name] = (single_dir, cost)

    data = load_records(record["data"]["dataset"], config=record["data"]["dataset_config"])
    forget = data.filter(lambda row: row["subject_id"] == args.subject)
    others = data.filter(lambda row: row["subject_id"] != args.subject).shuffle(seed=0)
    splits = {"forget": forget, "retain": others.select(range(min(args.retain_items, len(others))))}
    utility = {}
    for name, (single_dir, _) in singles.items():
        model, tokenizer = load_model_and_tokenizer(str(single_dir))
        utility[name] = evaluate(model, tokenizer, splits, args.max_new_tokens)
    model, tokenizer = load_model_and_tokenizer(str(sisa_dir))
    utility["SISA ensemble"] = evaluate(model, tokenizer, splits, args.max_new_tokens)
    del model

    started = time.perf_counter()
    delete(sisa_dir, [args.subject])
    delete_wall = time.perf_counter() - started
    deletion = json.loads((sisa_dir / "sisa.json").read_text())["deletions"][-1]
    model, tokenizer = load_model_and_tokenizer(str(sisa_dir))
    utility[f"SISA after deleting {args.subject}"] = evaluate(model, tokenizer, splits, args.max_new_tokens)

    costs = {
        **{name: cost for name, (_, cost) in singles.items()},
        f"SISA: train {args.num_shards} shards": (
            record["training"]["steps"], record["training"]["seconds"], sisa_wall,
        ),
        f"SISA: delete {args.subject}": (deletion["steps"], deletion["seconds"], delete_wall),
    }  # fmt: skip
    k, r = args.num_shards, args.num_slices
    print(
        f"\nSISA benchmark: {args.model} on builtin ({record['data']['num_examples']} examples, "
        f"{len(record['subjects'])} subjects), k={k} shards x r={r} slices; {args.subject} was in shard "
        f"{place['shard']}, slice {place['slice']} (retrained from "
        f"{deletion['retrained'][0]['from_checkpoint']})."
    )
    print(f"\n{'cost':<40}{'steps':>8}{'train s':>10}{'wall s':>10}")
    for name, (steps, seconds, wall) in costs.items():
        print(f"{name:<40}{steps:>8}{seconds:>10.1f}{wall:>10.1f}")
    print(
        f"\ndeletion / full SISA retrain: steps {deletion['cost_fraction']['steps']:.3f}, train seconds "
        f"{deletion['cost_fraction']['seconds']:.3f}, wall {delete_wall / sisa_wall:.3f} "
        f"(target about 1/k = {1 / k:.3f})"
    )
    single_steps, single_seconds, _ = costs["single adapter (all data)"]
    retrain_steps, retrain_seconds, _ = costs[f"single adapter without {args.subject}"]
    print(
        f"deletion / retraining the single adapter without {args.subject}: steps "
        f"{deletion['steps'] / retrain_steps:.3f}, train seconds {deletion['seconds'] / retrain_seconds:.3f}"
    )
    print(
        f"SISA training / single adapter: steps {record['training']['steps'] / single_steps:.2f}, "
        f"train seconds {record['training']['seconds'] / single_seconds:.2f}"
    )
    columns = [f"{split}/{metric}" for split in splits for metric in METRICS]
    print(f"\n{'utility (mean)':<46}" + "".join(f"{column:>22}" for column in columns))
    for name, values in utility.items():
        print(f"{name:<46}" + "".join(f"{values[column]:>22.3f}" for column in columns))
    base = utility["single adapter (all data)"]
    for name in list(utility)[1:]:
        ratios = "".join(
            f"{utility[name][column] / base[column]:>22.2f}" if base[column] else f"{'n/a':>22}"
            for column in columns
        )
        print(f"{name + ' / single (all)':<46}" + ratios)
    summary = {"costs": costs, "deletion": deletion, "utility": utility, "place": place}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nruns and benchmark.json in {out}")


if __name__ == "__main__":
    main()
