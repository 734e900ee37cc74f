"""SatImp: ascent with token weights p_t^beta1 (1-p_t)^beta2 (Yang et al. 2025, arXiv 2505.11953; docs/methods.md#satimp)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.logprobs import token_logprobs
from llm_unlearn.methods.retain import ForgetRetainConfig, combine_with_retain
from llm_unlearn.methods.wga import check_exponent, weighted_ascent_loss


@dataclass
class SatImpConfig(ForgetRetainConfig):
    """SatImp: gradient ascent with token weights p_t^beta1 (1-p_t)^beta2 (Yang et al. 2025, arXiv
    2505.11953)."""

    beta1: float = field(
        default=5.0,
        metadata={"help": "Exponent beta1 of p_t in the token weight p_t^beta1 (1-p_t)^beta2; >= 0."},
    )
    beta2: float = field(
        default=1.0,
        metadata={"help": "Exponent beta2 of (1-p_t) in the token weight p_t^beta1 (1-p_t)^beta2; >= 0."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_exponent("satimp", "beta1", self.beta1)
        check_exponent("satimp", "beta2", self.beta2)


@register_method("satimp", SatImpConfig)
def satimp_loss(step: UnlearnStep, config: SatImpConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L_f = -mean_t(w_t * -lp_t), w_t = p_t^beta1 (1-p_t)^beta2 detached; per-example token mean, then over examples."""
    lp, mask = token_logprobs(step.logits("forget"), step.labels("forget"))
    detached = lp.detach()
    # -expm1(lp) keeps 1 - p_t accurate when p_t is close to 1, the tokens this weight is about.
    weights = torch.exp(config.beta1 * detached) * (-torch.expm1(detached)).pow(config.beta2)
    forget_loss, logs = weighted_ascent_loss(lp, mask, weights)
    return combine_with_retain(step, config, forget_loss, logs)
