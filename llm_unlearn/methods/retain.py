"""Retain losses L_r, selectable by name: `nll` on the retain batch, or `kl` to the reference model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llm_unlearn.methods.base import MethodConfig, UnlearnStep
from llm_unlearn.methods.logprobs import sequence_kl, sequence_nll


def retain_nll(step: UnlearnStep) -> torch.Tensor:
    """Mean NLL of the retain answers under the trained model."""
    return sequence_nll(step.logits("retain"), step.labels("retain")).mean()


def retain_kl(step: UnlearnStep) -> torch.Tensor:
    """Mean KL(p_ref || p_theta) over retain answer tokens (docs/methods.md#kl, retain loss `kl`)."""
    return sequence_kl(step.reference_logits("retain"), step.logits("retain"), step.labels("retain")).mean()


RETAIN_LOSSES: dict[str, Callable[[UnlearnStep], torch.Tensor]] = {"nll": retain_nll, "kl": retain_kl}


def check_retain_loss(name: str) -> str:
    """Validate a retain-loss name, listing the accepted ones."""
    if name not in RETAIN_LOSSES:
        raise ValueError(f"retain_loss={name!r} is not known; use one of {sorted(RETAIN_LOSSES)}.")
    return name


def gamma_field(default: float = 1.0) -> Any:
    """The `gamma` field of a `ForgetRetainConfig`, for a method that changes its default."""
    return field(
        default=default,
        metadata={"help": "Weight gamma of the forget loss L_f in L = gamma * L_f + alpha * L_r."},
    )


def alpha_field(default: float = 1.0) -> Any:
    """The `alpha` field of a `ForgetRetainConfig`, for a method that changes its default."""
    return field(
        default=default,
        metadata={
            "help": "Weight alpha of the retain loss L_r in L = gamma * L_f + alpha * L_r; 0 drops L_r and "
            "reads no retain batch."
        },
    )


@dataclass
class ForgetRetainConfig(MethodConfig):
    """The combination L = gamma * L_f + alpha * L_r shared by most methods; alpha = 0 drops the retain term."""

    gamma: float = gamma_field()
    alpha: float = alpha_field()
    retain_loss: str = field(
        default="nll",
        metadata={
            "help": "Retain loss L_r: 'nll', the NLL of the retain answers, or 'kl', KL(p_ref || p_theta) "
            "over their tokens (needs the reference model)."
        },
    )

    def __post_init__(self) -> None:
        check_retain_loss(self.retain_loss)

    @property
    def uses_retain(self) -> bool:
        return self.alpha != 0

    @property
    def needs_reference_model(self) -> bool:
        return self.uses_retain and self.retain_loss == "kl"


def combine_with_retain(
    step: UnlearnStep, config: ForgetRetainConfig, forget_loss: torch.Tensor, logs: dict[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return gamma * forget_loss + alpha * L_r (the retain term only when alpha != 0), with its log entry."""
    loss = config.gamma * forget_loss
    if config.uses_retain:
        retain_loss = RETAIN_LOSSES[config.retain_loss](step)
        loss = loss + config.alpha * retain_loss
        logs = {**logs, f"retain_{config.retain_loss}": retain_loss.item()}
    return loss, logs
