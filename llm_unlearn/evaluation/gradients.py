"""Per-item gradient norms for the GradNorm membership score (docs/metrics.md#gradnorm)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from llm_unlearn.data.formatting import IGNORE_INDEX

# How the per-parameter gradients become one number: the L2 norm of all of them concatenated, or the mean over
# parameter tensors of each tensor's L2 norm.
GradnormReduction = Literal["global_l2", "mean_tensor_l2"]
GRADNORM_REDUCTIONS: tuple[str, ...] = get_args(GradnormReduction)
# The model's mode during the pass: eval (dropout off) or train (dropout and the like active).
GradnormMode = Literal["eval", "train"]
GRADNORM_MODES: tuple[str, ...] = get_args(GradnormMode)


def _without_last_label(labels: torch.Tensor) -> torch.Tensor:
    """`labels` `[1, T]` with its last labelled position set to IGNORE_INDEX, unless it is the only one (then
    nothing would be left to score)."""
    positions = (labels[0] != IGNORE_INDEX).nonzero()
    if positions.numel() < 2:
        return labels
    labels = labels.clone()
    labels[0, positions[-1]] = IGNORE_INDEX
    return labels


def _reduce(grads: Sequence[torch.Tensor], reduction: GradnormReduction) -> float:
    """One number from the gradients of the parameter tensors (docs/metrics.md#gradnorm)."""
    if reduction == "global_l2":
        return float(torch.stack([grad.float().square().sum() for grad in grads]).sum().sqrt())
    return float(torch.stack([torch.linalg.vector_norm(grad.float()) for grad in grads]).mean())


def gradient_norms(
    model: PreTrainedModel,
    encoded: Sequence[dict[str, list[int]]],
    *,
    progress: str | None = None,
    exclude_last_token: bool = False,
    reduction: GradnormReduction = "global_l2",
    mode: GradnormMode = "eval",
) -> list[float]:
    """The norm of the gradient of each item's mean answer NLL with respect to the model's trainable parameters
    (all parameters when none is marked trainable), one item at a time as GradNorm prescribes (batch size 1;
    docs/metrics.md#gradnorm). `reduction="global_l2"` (default) is the L2 norm of the whole gradient,
    `"mean_tensor_l2"` the mean over parameter tensors of each tensor's L2 norm; `mode` is the model's mode during
    the pass ("eval", default: dropout off; "train": as in training), restored afterwards;
    `exclude_last_token` leaves the last labelled token out of the NLL. The model's own `.grad` buffers are left
    untouched."""
    if reduction not in GRADNORM_REDUCTIONS:
        raise ValueError(f"reduction must be one of {GRADNORM_REDUCTIONS}, got {reduction!r}.")
    if mode not in GRADNORM_MODES:
        raise ValueError(f"mode must be one of {GRADNORM_MODES}, got {mode!r}.")
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    frozen = not parameters
    if frozen:
        parameters = list(model.parameters())
    was_training = model.training
    # Eval mode by default: the score is then a property of the model, not of a random dropout mask.
    model.train(mode == "train")
    norms = []
    try:
        for parameter in parameters if frozen else ():
            parameter.requires_grad_(True)
        for item in tqdm(encoded, desc=progress, disable=progress is None):
            input_ids = torch.tensor([item["input_ids"]], device=model.device)
            labels = torch.tensor([item["labels"]], device=model.device)
            if exclude_last_token:
                labels = _without_last_label(labels)
            logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
            targets = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
            # autograd.grad returns the gradients instead of accumulating into .grad, so evaluating inside a
            # training loop (the eval callback) cannot disturb the optimizer's gradients.
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            # A parameter the loss does not reach (allow_unused gives None) has no gradient to count.
            norms.append(_reduce([grad for grad in grads if grad is not None], reduction))
    finally:
        for parameter in parameters if frozen else ():
            parameter.requires_grad_(False)
        model.train(was_training)
    return norms
