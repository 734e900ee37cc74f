"""Gradient difference: ascend on the forget set, descend on the retain set (REFERENCE.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_unlearn.methods.base import MethodConfig, UnlearnStep, register_method
from llm_unlearn.methods.logprobs import sequence_nll
from llm_unlearn.methods.retain import RETAIN_LOSSES, check_retain_loss


@dataclass
class GradDiffConfig(MethodConfig):
    """gamma weights the forget term, alpha the retain term; retain_loss is `nll` or `kl`."""

    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "nll"

    def __post_init__(self) -> None:
        check_retain_loss(self.retain_loss)

    @property
    def uses_retain(self) -> bool:
        return True

    @property
    def needs_reference_model(self) -> bool:
        return self.retain_loss == "kl"


@register_method("graddiff", GradDiffConfig)
def grad_diff_loss(step: UnlearnStep, config: GradDiffConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = gamma * (-NLL(forget)) + alpha * L_r(retain)."""
    forget_nll = sequence_nll(step.logits("forget"), step.labels("forget")).mean()
    retain_loss = RETAIN_LOSSES[config.retain_loss](step)
    loss = -config.gamma * forget_nll + config.alpha * retain_loss
    return loss, {"forget_nll": forget_nll.item(), f"retain_{config.retain_loss}": retain_loss.item()}
