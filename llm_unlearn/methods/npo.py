"""NPO: negative preference optimization on the forget set (Zhang et al. 2024, arXiv 2404.05868)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.logprobs import sequence_logprob
from llm_unlearn.methods.retain import ForgetRetainConfig, combine_with_retain


@dataclass
class NPOConfig(ForgetRetainConfig):
    """NPO: negative preference optimization on the forget set (Zhang et al. 2024, arXiv 2404.05868)."""

    beta: float = field(
        default=0.1,
        metadata={
            "help": "Inverse temperature beta of L_NPO = -(2/beta) log sigmoid(-beta * (seqlogp(y) - "
            "seqlogp_ref(y))); > 0."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"npo needs beta > 0, got beta={self.beta}.")

    @property
    def cached_reference_views(self) -> tuple[str, ...]:
        return ("",)


def npo_loss_from_logprobs(
    seq_logprob: torch.Tensor, ref_seq_logprob: torch.Tensor, beta: float
) -> torch.Tensor:
    """-(2/beta) * mean_i log sigmoid(-beta * (seqlogp_theta(y_i) - seqlogp_ref(y_i))) (docs/methods.md#npo)."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_logprob - ref_seq_logprob)).mean()


@register_method("npo", NPOConfig)
def npo_loss(step: UnlearnStep, config: NPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = gamma * L_NPO(forget) + alpha * L_r, with reference log-probs cached before training."""
    forget = step.batch("forget")
    seq_logprob = sequence_logprob(step.logits("forget"), forget["labels"])
    forget_loss = npo_loss_from_logprobs(
        seq_logprob, forget["ref_seq_logprob"].to(seq_logprob.dtype), config.beta
    )
    logs = {
        "forget_npo": forget_loss.item(),
        "forget_log_ratio": (seq_logprob - forget["ref_seq_logprob"]).mean().item(),
    }
    return combine_with_retain(step, config, forget_loss, logs)
