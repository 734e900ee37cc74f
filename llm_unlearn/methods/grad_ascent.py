"""Gradient ascent: maximise the NLL of the forget answers (docs/methods.md#grad_ascent, GradAscent).

It is GradDiff without the retain term, so it registers GradDiff's loss with alpha = 0 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_unlearn.methods.base import register_method
from llm_unlearn.methods.grad_diff import GradDiffConfig, grad_diff_loss
from llm_unlearn.methods.retain import alpha_field


@dataclass
class GradAscentConfig(GradDiffConfig):
    """GradAscent: ascent on the NLL of the forget answers; GradDiff without its retain term by default."""

    alpha: float = alpha_field(0.0)


register_method("grad_ascent", GradAscentConfig)(grad_diff_loss)
