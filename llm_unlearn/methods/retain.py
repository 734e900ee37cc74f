"""Retain losses L_r, selectable by name: `nll` on the retain batch, or `kl` to the reference model."""

from __future__ import annotations

from collections.abc import Callable

import torch

from llm_unlearn.methods.base import UnlearnStep
from llm_unlearn.methods.logprobs import sequence_kl, sequence_nll


def retain_nll(step: UnlearnStep) -> torch.Tensor:
    """Mean NLL of the retain answers under the trained model."""
    return sequence_nll(step.logits("retain"), step.labels("retain")).mean()


def retain_kl(step: UnlearnStep) -> torch.Tensor:
    """Mean KL(p_ref || p_theta) over retain answer tokens (REFERENCE.md section 1, retain loss `kl`)."""
    return sequence_kl(step.reference_logits("retain"), step.logits("retain"), step.labels("retain")).mean()


RETAIN_LOSSES: dict[str, Callable[[UnlearnStep], torch.Tensor]] = {"nll": retain_nll, "kl": retain_kl}


def check_retain_loss(name: str) -> str:
    """Validate a retain-loss name, listing the accepted ones."""
    if name not in RETAIN_LOSSES:
        raise ValueError(f"retain_loss={name!r} is not known; use one of {sorted(RETAIN_LOSSES)}.")
    return name
