"""Gradient difference: ascend on the forget set, descend on the retain set (docs/methods.md#graddiff)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.logprobs import sequence_nll
from llm_unlearn.methods.retain import ForgetRetainConfig, combine_with_retain


@dataclass
class GradDiffConfig(ForgetRetainConfig):
    """GradDiff: gradient ascent on the forget set, descent on the retain set (docs/methods.md#graddiff)."""


@register_method("graddiff", GradDiffConfig)
def grad_diff_loss(step: UnlearnStep, config: GradDiffConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = gamma * (-NLL(forget)) + alpha * L_r(retain)."""
    forget_nll = sequence_nll(step.logits("forget"), step.labels("forget")).mean()
    return combine_with_retain(step, config, -forget_nll, {"forget_nll": forget_nll.item()})
