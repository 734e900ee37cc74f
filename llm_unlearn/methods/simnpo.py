"""SimNPO: reference-free NPO on the length-normalised log-likelihood (docs/methods.md#simnpo)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.logprobs import sequence_nll
from llm_unlearn.methods.retain import ForgetRetainConfig, combine_with_retain, gamma_field


@dataclass
class SimNPOConfig(ForgetRetainConfig):
    """SimNPO: reference-free NPO on the length-normalised log-likelihood (Fan et al. 2024, arXiv
    2410.07163)."""

    beta: float = field(
        default=4.5,
        metadata={
            "help": "Inverse temperature beta of L_f = -(2/beta) log sigmoid(-beta * seqlogp(y)/|y| - delta)"
            "; > 0."
        },
    )
    delta: float = field(
        default=0.0, metadata={"help": "Reward margin delta in the sigmoid of L_f (the paper's gamma)."}
    )
    gamma: float = gamma_field(0.125)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0 or not math.isfinite(self.beta):
            raise ValueError(
                f"simnpo needs a finite beta > 0 (the loss divides by it); got beta={self.beta}."
            )
        if not math.isfinite(self.delta):
            raise ValueError(f"simnpo needs a finite delta; got delta={self.delta}.")


@register_method("simnpo", SimNPOConfig)
def simnpo_loss(step: UnlearnStep, config: SimNPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L_f = -(2/beta) mean_i log sigmoid(-beta * seqlogp(y_i)/|y_i| - delta) (Fan et al. 2024, arXiv 2410.07163)."""
    # seqlogp/|y| is exactly -NLL, so the sigmoid's argument is beta * NLL - delta.
    forget_nll = sequence_nll(step.logits("forget"), step.labels("forget"))
    forget_loss = -(2.0 / config.beta) * F.logsigmoid(config.beta * forget_nll - config.delta).mean()
    logs = {"forget_nll": forget_nll.mean().item(), "forget_simnpo": forget_loss.item()}
    return combine_with_retain(step, config, forget_loss, logs)
