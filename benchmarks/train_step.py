"""Seconds per training step and peak memory of plain fine-tuning, GradAscent and GradDiff (full and LoRA) on
the embedded model with one fixed batch, as ratios to the plain fine-tune step of the same mode; plus the
demo's wall time split by phase (from a demo.json).

    python benchmarks/train_step.py [--steps 3] [--demo_json outputs/demo/demo.json]

Each configuration runs in its own process so that its peak memory (max RSS on CPU, max allocated on CUDA) is
its own. Ratios are taken within this one run; absolute seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = ("finetune", "grad_ascent", "graddiff_nll", "graddiff_kl")
MODES = ("full", "lora")


def measure(case: str, mode: str, steps: int, batch_size: int) -> dict[str, float]:
    """Time `steps` optimizer steps (after one warm-up step) of one case; runs inside a child process."""
    import torch
    from peft import LoraConfig

    from llm_unlearn.data.fictional import make_fictional_dataset
    from llm_unlearn.data.formatting import PaddingCollator, tokenize_dataset
    from llm_unlearn.methods import UnlearnStep, get_method
    from llm_unlearn.models import load_model_and_tokenizer
    from llm_unlearn.trainer import frozen_reference, reference_model

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lora = (
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        if mode == "lora"
        else None
    )
    model, tokenizer = load_model_and_tokenizer("embedded", peft_config=lora)
    model.to(device).train()
    data = tokenize_dataset(make_fictional_dataset(num_people=4)["train"], tokenizer, max_length=128)
    collate = PaddingCollator(tokenizer.pad_token_id)
    forget = {k: v.to(device) for k, v in collate([data[i] for i in range(batch_size)]).items()}
    retain = {
        k: v.to(device) for k, v in collate([data[i] for i in range(batch_size, 2 * batch_size)]).items()
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    reference = None
    if case == "graddiff_kl":
        frozen = frozen_reference(model, device)

        def reference():
            return reference_model(model, frozen)

    def step() -> None:
        if case == "finetune":
            loss = model(**forget).loss
        else:
            method = get_method("grad_ascent" if case == "grad_ascent" else "graddiff")
            config = method.make_config({"retain_loss": "kl"} if case == "graddiff_kl" else None)
            batches = {"forget": forget, "retain": retain}
            loss, _ = method.loss(UnlearnStep(model, batches, reference=reference), config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_step": (time.perf_counter() - started) / steps, "peak_memory_mb": peak_mb}


def run_child(case: str, mode: str, steps: int, batch_size: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        case,
        mode,
        "--steps",
        str(steps),
        "--batch_size",
        str(batch_size),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case}/{mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--demo_json", default="outputs/demo/demo.json")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, steps=args.steps, batch_size=args.batch_size)))
        return

    results = {
        (case, mode): run_child(case, mode, args.steps, args.batch_size) for mode in MODES for case in CASES
    }
    print(
        f"Training step on the embedded model, batch {args.batch_size} (forget) + {args.batch_size} (retain)"
    )
    print(f"{'mode':<6}{'case':<14}{'s/step':>9}{'x finetune':>12}{'peak MB':>10}{'x finetune':>12}")
    for (case, mode), result in results.items():
        base = results[("finetune", mode)]
        print(
            f"{mode:<6}{case:<14}{result['seconds_per_step']:>9.2f}"
            f"{result['seconds_per_step'] / base['seconds_per_step']:>12.2f}"
            f"{result['peak_memory_mb']:>10.0f}{result['peak_memory_mb'] / base['peak_memory_mb']:>12.2f}"
        )
    lora, full = results[("finetune", "lora")], results[("finetune", "full")]
    print(
        f"LoRA fine-tune step / full fine-tune step: {lora['seconds_per_step'] / full['seconds_per_step']:.2f}"
    )

    demo = Path(args.demo_json)
    if demo.is_file():
        summary = json.loads(demo.read_text())
        total = summary["wall_time_s"]
        print(f"\nDemo wall time by phase ({demo}): total {total:.0f} s")
        for phase, seconds in summary["phases_s"].items():
            print(f"  {phase:<18}{seconds:>8.1f} s {seconds / total:>7.1%}")
    else:
        print(f"\n(no {demo}: run `make demo` first for the demo's phase split)")


if __name__ == "__main__":
    main()
