"""Relearning attack (Hu et al. 2024, arXiv 2406.13356; docs/attacks.md#relearning): fine-tune the unlearned model
briefly on part of the forget set and re-measure the rest. If unlearning only suppressed the knowledge, a little
training on related facts brings back the facts it never saw again. What the attack itself teaches is
controlled for by running it the same way on the retain model's eval and comparing the two reports."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from llm_unlearn.data.formatting import PaddingCollator, encode_qa
from llm_unlearn.evaluation.attacks.base import (
    AttackContext,
    Remeasure,
    measure,
    register_attack,
    restored_afterwards,
    retain_remeasure,
)
from llm_unlearn.evaluation.statistics import compute_item_statistics


def relearn_split(num_items: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split item indices 0..num_items-1 at random (by `seed`) into a relearn part of round(fraction * num_items)
    items and the rest, each in ascending order; both parts must be non-empty."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction}.")
    num_relearn = round(fraction * num_items)
    if not 0 < num_relearn < num_items:
        raise ValueError(
            f"fraction={fraction} of {num_items} forget items gives {num_relearn} to relearn and "
            f"{num_items - num_relearn} to re-measure; the relearning attack needs at least one of each."
        )
    order = random.Random(seed).sample(range(num_items), num_items)
    return sorted(order[:num_relearn]), sorted(order[num_relearn:])


def fine_tune(
    model: PreTrainedModel,
    encoded: Sequence[dict[str, list[int]]],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    pad_token_id: int,
    seed: int,
) -> None:
    """Full-parameter AdamW fine-tuning on `encoded` items (`input_ids` + `labels`, loss on answer tokens only),
    reshuffled every epoch; seeded, and without touching the caller's random state."""
    parameters = list(model.parameters())
    for param in parameters:
        param.requires_grad_(True)
        param.grad = None
    # No weight decay: transformers.Trainer's default, and decay would pull every weight, not only relearn.
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    collate = PaddingCollator(pad_token_id=pad_token_id)
    order_rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # dropout, for models that have it
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(encoded), generator=order_rng).tolist()
            for start in range(0, len(order), batch_size):
                batch = collate([encoded[index] for index in order[start : start + batch_size]])
                batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
                model(**batch, use_cache=False).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    model.eval()


def _mean_nll(model: PreTrainedModel, encoded: Sequence[dict[str, list[int]]], pad_token_id: int) -> float:
    statistics = compute_item_statistics(model, encoded, pad_token_id=pad_token_id)
    return float(np.mean([stats.nll for stats in statistics]))


# A brief relearn at the learning rate TOFU fine-tunes with (1e-5).
@register_attack("relearn", fraction=0.5, epochs=2, learning_rate=1e-5, batch_size=4)
def relearn(
    context: AttackContext, *, fraction: float, epochs: int, learning_rate: float, batch_size: int
) -> dict:
    """Fine-tune the model on a seeded `fraction` of the forget items, re-measure the other forget items (as
    `<forget>_rest`) and the retain split, then restore the weights (Hu et al. 2024, arXiv 2406.13356;
    docs/attacks.md#relearning). The result records the mean NLL of the relearned items before and after."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}.")
    forget = context.split(context.forget_split)
    relearn_indices, rest_indices = relearn_split(len(forget), fraction, context.seed)
    relearn_items = forget.select(relearn_indices)
    encoded = [
        encode_qa(
            context.tokenizer,
            question,
            answer,
            template=context.prompt_template,
            system_prompt=context.system_prompt,
            date_string=context.date_string,
            max_length=context.max_length,
        )
        for question, answer in zip(relearn_items["question"], relearn_items["answer"], strict=True)
    ]
    rest = Remeasure(dataset=forget.select(rest_indices), source=context.forget_split, indices=rest_indices)
    remeasures = {f"{context.forget_split}_rest": rest, **retain_remeasure(context)}
    model = context.model
    with restored_afterwards(model, dict(model.named_parameters())):
        loss_before = _mean_nll(model, encoded, context.pad_token_id)
        fine_tune(
            model,
            encoded,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            pad_token_id=context.pad_token_id,
            seed=context.seed,
        )
        loss_after = _mean_nll(model, encoded, context.pad_token_id)
        measured = measure(context, remeasures)
    return {
        "description": (
            f"fine-tuned for {epochs} epoch(s) at learning rate {learning_rate} on {len(relearn_indices)} of "
            f"{len(forget)} forget items, re-measured on the other {len(rest_indices)}"
        ),
        "relearn_indices": relearn_indices,
        "relearn_loss": {"before": loss_before, "after": loss_after},
        **measured,
    }
