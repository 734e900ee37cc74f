"""Gradient ascent: maximise the NLL of the forget answers (REFERENCE.md section 1, GradAscent)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_unlearn.methods.base import MethodConfig, UnlearnStep, register_method
from llm_unlearn.methods.logprobs import sequence_nll


@dataclass
class GradAscentConfig(MethodConfig):
    """GradAscent has no hyperparameters besides the learning rate."""


@register_method("grad_ascent", GradAscentConfig)
def grad_ascent_loss(step: UnlearnStep, config: GradAscentConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = -NLL(forget), averaged over forget examples."""
    forget_nll = sequence_nll(step.logits("forget"), step.labels("forget")).mean()
    return -forget_nll, {"forget_nll": forget_nll.item()}
