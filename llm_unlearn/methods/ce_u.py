"""CE-U: cross-entropy to the model's own distribution without the true token (Yang 2025, arXiv 2503.01224; docs/methods.md#ce_u)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_unlearn.data.formatting import IGNORE_INDEX
from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.logprobs import shift_for_next_token
from llm_unlearn.methods.retain import ForgetRetainConfig, alpha_field, combine_with_retain


def target_positions(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return `(logits, targets, mask)`: a fresh (N, V) float32 copy of the logits and the (N,) tokens at targets."""
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    # Boolean indexing copies, so the caller may modify the result without touching cached logits.
    return logits[mask].float(), labels[mask], mask


def softmax_in_place(logits: torch.Tensor) -> torch.Tensor:
    """Overwrite (N, V) logits with their softmax, so a target distribution costs no second vocabulary tensor."""
    return logits.sub_(logits.logsumexp(dim=-1, keepdim=True)).exp_()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_v target_v log softmax(logits)_v per row, as logsumexp - <target, logits> (no log-softmax tensor)."""
    return logits.logsumexp(dim=-1) - torch.einsum("nv,nv->n", target, logits)


def mean_per_sequence(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (N,) values at the True positions of `mask` (B, T) within each row, shape (B,)."""
    sums = torch.zeros(mask.shape[0], dtype=token_values.dtype, device=token_values.device)
    sums.index_add_(0, mask.nonzero()[:, 0], token_values)
    return sums / mask.sum(dim=-1).clamp(min=1)


def ce_u_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """softmax of detached (N, V) logits with each row's true token set to -inf, so it gets zero mass."""
    masked = logits.detach().to(torch.float32, copy=True)
    masked.scatter_(-1, targets[:, None], float("-inf"))
    return softmax_in_place(masked)


@dataclass
class CEUConfig(ForgetRetainConfig):
    """CE-U: cross-entropy to the model's own distribution without the true token (Yang 2025, arXiv
    2503.01224)."""

    alpha: float = alpha_field(0.0)


@register_method("ce_u", CEUConfig)
def ce_u_loss(step: UnlearnStep, config: CEUConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L_f = CE(p_theta, softmax(sg(z) with z_y = -inf)): per-example token mean, then mean over examples."""
    logits, targets, mask = target_positions(step.logits("forget"), step.labels("forget"))
    token_ce = soft_cross_entropy(logits, ce_u_target(logits, targets))
    forget_loss = mean_per_sequence(token_ce, mask).mean()
    return combine_with_retain(step, config, forget_loss, {"forget_ce_u": forget_loss.item()})
