"""Retain-only fine-tuning: plain NLL on the retain set, the forget set never seen (docs/methods.md#retain_finetune).

Started from the base model this is the exact-unlearning baseline (retraining without the forget data; the
finetune recipe with `train_on: retain` does the same); started from the target it is the "fine-tune on the
retain set" baseline. The forget batches only pace the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_unlearn.methods.base import MethodConfig, UnlearnStep, register_method
from llm_unlearn.methods.logprobs import sequence_nll


@dataclass
class RetainFinetuneConfig(MethodConfig):
    """Retain-only fine-tuning: plain NLL on the retain set, the forget set never seen (docs/methods.md#retain_finetune
    section 1)."""

    @property
    def uses_retain(self) -> bool:
        return True


@register_method("retain_finetune", RetainFinetuneConfig)
def retain_finetune_loss(
    step: UnlearnStep, config: RetainFinetuneConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = NLL(retain), averaged over retain examples."""
    retain_nll = sequence_nll(step.logits("retain"), step.labels("retain")).mean()
    return retain_nll, {"retain_nll": retain_nll.item()}
