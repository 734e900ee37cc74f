"""Token-level quantities every method is built from, as pure functions over logits and labels.

Labels follow the transformers convention: `labels[:, t]` is the token predicted from position t-1, and -100
marks positions without a target (prompt and padding). Per-sequence values are means over a sequence's own
target tokens, so a batch mean does not depend on how a global batch is split across processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm_unlearn.data.formatting import IGNORE_INDEX


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1: returns `(logits[:, :-1], labels[:, 1:])`."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(lp, mask)` of shape (B, T-1): lp_t = log p(y_t | x, y_<t) at target positions, 0 elsewhere."""
    logits, labels = shift_for_next_token(logits, labels)
    mask = labels != IGNORE_INDEX
    # cross_entropy fuses log-softmax and gather without keeping a float32 copy of the full log-probs.
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(labels.shape)
    return -nll, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """seqlogp(y|x) = sum_t lp_t per sequence, shape (B,)."""
    lp, _ = token_logprobs(logits, labels)
    return lp.sum(dim=-1)


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL(y|x) = -(1/|y|) sum_t lp_t per sequence, shape (B,) (docs/methods.md#notation, notation)."""
    lp, mask = token_logprobs(logits, labels)
    return -lp.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


def sequence_kl(reference_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over target positions of KL(p_ref || p_theta) of the next-token distributions, shape (B,)."""
    logits, shifted = shift_for_next_token(logits, labels)
    reference_logits = reference_logits[:, :-1, :]
    mask = shifted != IGNORE_INDEX
    log_p = F.log_softmax(logits[mask].float(), dim=-1)
    log_ref = F.log_softmax(reference_logits[mask].float(), dim=-1)
    kl_tokens = (log_ref.exp() * (log_ref - log_p)).sum(dim=-1)
    per_sequence = torch.zeros(mask.shape[0], dtype=kl_tokens.dtype, device=kl_tokens.device)
    per_sequence.index_add_(0, mask.nonzero()[:, 0], kl_tokens)
    return per_sequence / mask.sum(dim=-1).clamp(min=1)
