"""DPO on the forget set with a refusal (IdkPO, TOFU) or an alternate answer as the preferred response
(Rafailov et al. 2023; Maini et al. 2024)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from llm_unlearn.methods.base import UnlearnStep, register_method
from llm_unlearn.methods.logprobs import sequence_logprob
from llm_unlearn.methods.retain import ForgetRetainConfig, combine_with_retain

PREFERRED = ("refusal", "alternate")
WIN_VIEW = "win"
# Varied refusals, so the model learns to decline rather than to repeat one sentence.
REFUSALS = (
    "I don't know.",
    "I'm not sure about that.",
    "I don't have that information.",
    "I can't answer that question.",
    "That is something I don't know.",
    "I have no information about that.",
    "I'm afraid I can't help with that.",
    "I don't have any details on that.",
    "Sorry, I don't know the answer.",
    "I can't say, I don't know.",
    "That isn't something I can tell you.",
    "I have no knowledge of that.",
    "I'm unable to answer that.",
    "I don't know anything about that.",
    "I'm not able to provide that information.",
    "Unfortunately, I don't know.",
    "I'm not aware of the answer to that.",
    "That's beyond what I know.",
    "I can't recall any information about that.",
    "I really don't know.",
)


def refusal_for(question: str) -> str:
    """A refusal chosen by a hash of the question: the same question always gets the same refusal."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return REFUSALS[int.from_bytes(digest[:4], "big") % len(REFUSALS)]


@dataclass
class DPOConfig(ForgetRetainConfig):
    """DPO on the forget set, preferring a refusal (IdkPO) or an alternate answer to the true one (Rafailov et
    al. 2023; Maini et al. 2024)."""

    beta: float = field(
        default=0.1,
        metadata={
            "help": "Inverse temperature beta of L_DPO = -(2/beta) log sigmoid(beta * (log-ratio of the "
            "preferred answer - log-ratio of the true one)) to the reference; > 0."
        },
    )
    preferred: str = field(
        default="refusal",
        metadata={
            "help": "The preferred answer: 'refusal', one of 20 varied refusals (IdkPO), or 'alternate', the "
            "first entry of alternate_field."
        },
    )
    alternate_field: str = field(
        default="perturbed_answer",
        metadata={
            "help": "Forget-set column whose (first) entry is the preferred answer for preferred='alternate'."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"dpo needs beta > 0, got beta={self.beta}.")
        if self.preferred not in PREFERRED:
            raise ValueError(f"preferred={self.preferred!r} is not known; use one of {PREFERRED}.")

    @property
    def cached_reference_views(self) -> tuple[str, ...]:
        return ("", WIN_VIEW)

    def forget_views(self) -> dict[str, Any]:
        return {WIN_VIEW: self.preferred_answer}

    def preferred_answer(self, example: dict[str, Any]) -> str:
        """The preferred (win) response for a forget example."""
        if self.preferred == "refusal":
            return refusal_for(example["question"])
        value = example.get(self.alternate_field)
        if isinstance(value, list):
            value = value[0] if value else None
        if not value:
            raise ValueError(
                f"dpo with preferred='alternate' needs a non-empty {self.alternate_field!r} in every forget "
                f"example; the question {example['question'][:60]!r} has none. Use preferred='refusal' instead."
            )
        return value


def dpo_loss_from_logprobs(
    win: torch.Tensor, win_ref: torch.Tensor, lose: torch.Tensor, lose_ref: torch.Tensor, beta: float
) -> torch.Tensor:
    """-(2/beta) * mean log sigmoid(beta * [(win - win_ref) - (lose - lose_ref)]) (docs/methods.md#dpo)."""
    return -(2.0 / beta) * F.logsigmoid(beta * ((win - win_ref) - (lose - lose_ref))).mean()


@register_method("dpo", DPOConfig)
def dpo_loss(step: UnlearnStep, config: DPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = gamma * L_DPO(preferred over true answer) + alpha * L_r; reference log-probs cached before training."""
    lose_batch, win_batch = step.batch("forget"), step.batch(f"forget_{WIN_VIEW}")
    lose = sequence_logprob(step.logits("forget"), lose_batch["labels"])
    win = sequence_logprob(step.logits(f"forget_{WIN_VIEW}"), win_batch["labels"])
    forget_loss = dpo_loss_from_logprobs(
        win,
        win_batch["ref_seq_logprob"].to(win.dtype),
        lose,
        lose_batch["ref_seq_logprob"].to(lose.dtype),
        config.beta,
    )
    logs = {
        "forget_dpo": forget_loss.item(),
        "win_logprob": win.mean().item(),
        "lose_logprob": lose.mean().item(),
    }
    return combine_with_retain(step, config, forget_loss, logs)
