"""UNDIAL: self-distillation on reference logits with the true token lowered (Dong et al. 2024, arXiv 2402.10052; docs/methods.md#undial)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.ce_u import mean_per_sequence, soft_cross_entropy, softmax_in_place, target_positions
from llm_unlearn.methods.retain import ForgetRetainConfig, alpha_field, combine_with_retain


def undial_target_(reference_logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Overwrite (N, V) float32 reference logits with softmax(z_ref - beta * onehot(y)) and return them."""
    reference_logits[torch.arange(targets.numel(), device=targets.device), targets] -= beta
    return softmax_in_place(reference_logits)


@dataclass
class UNDIALConfig(ForgetRetainConfig):
    """UNDIAL: self-distillation on reference logits with the true token lowered (Dong et al. 2024, arXiv
    2402.10052)."""

    beta: float = field(
        default=10.0,
        metadata={
            "help": "How far the true token's reference logit is lowered: the target is softmax(z_ref - "
            "beta * onehot(y)); >= 0."
        },
    )
    alpha: float = alpha_field(0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0 or not math.isfinite(self.beta):
            raise ValueError(f"undial needs a finite beta >= 0; got beta={self.beta}.")

    @property
    def needs_reference_model(self) -> bool:
        # The target distribution is built from the reference model's logits on the forget batch.
        return True


@register_method("undial", UNDIALConfig)
def undial_loss(step: UnlearnStep, config: UNDIALConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L_f = CE(p_theta, softmax(z_ref - beta * onehot(y))): per-example token mean, then mean over examples."""
    labels = step.labels("forget")
    logits, targets, mask = target_positions(step.logits("forget"), labels)
    # A fresh copy from target_positions, so building the target in place leaves the cached logits intact.
    reference, _, _ = target_positions(step.reference_logits("forget"), labels)
    token_ce = soft_cross_entropy(logits, undial_target_(reference, targets, config.beta))
    forget_loss = mean_per_sequence(token_ce, mask).mean()
    return combine_with_retain(step, config, forget_loss, {"forget_undial_ce": forget_loss.item()})
