"""WGA: gradient ascent with token weights p_t^beta (Wang et al. 2025, arXiv 2502.19301; docs/methods.md#wga)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.logprobs import token_logprobs
from llm_unlearn.methods.retain import ForgetRetainConfig, combine_with_retain


def check_exponent(method: str, name: str, value: float) -> None:
    """Reject a negative or non-finite weight exponent, naming the method and field."""
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{method} needs a finite {name} >= 0; got {name}={value}.")


def weighted_ascent_loss(
    lp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """-mean_t(w_t * -lp_t) within each example, then mean over examples; `weights` must carry no gradient."""
    counts = mask.sum(dim=-1).clamp(min=1)
    # lp is 0 off-target, so off-target weights drop out of the sums.
    per_example = (weights * lp).sum(dim=-1) / counts
    mean_weight = (weights * mask).sum(dim=-1) / counts
    logs = {
        "forget_nll": (-lp.sum(dim=-1) / counts).mean().item(),
        "forget_mean_weight": mean_weight.mean().item(),
    }
    return per_example.mean(), logs


@dataclass
class WGAConfig(ForgetRetainConfig):
    """WGA: gradient ascent with token weights p_t^beta (Wang et al. 2025, arXiv 2502.19301)."""

    beta: float = field(
        default=1.0,
        metadata={
            "help": "Exponent beta of the token weight p_t^beta (no gradient through it); 0 is plain ascent."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_exponent("wga", "beta", self.beta)


@register_method("wga", WGAConfig)
def wga_loss(step: UnlearnStep, config: WGAConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L_f = -mean_t(w_t * -lp_t), w_t = exp(lp_t)^beta detached; per-example token mean, then mean over examples."""
    lp, mask = token_logprobs(step.logits("forget"), step.labels("forget"))
    weights = torch.exp(config.beta * lp.detach())
    forget_loss, logs = weighted_ascent_loss(lp, mask, weights)
    return combine_with_retain(step, config, forget_loss, logs)
