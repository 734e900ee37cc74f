"""The one teacher-forced pass: per answer token log-probabilities and argmax hits (REFERENCE.md section 2),
and on request the per-position distribution statistics of Min-K%++ (REFERENCE.md section 3).

Every logit-based metric (probability, truth ratio, exact memorization, extraction strength, LOSS, zlib,
Min-K%, ...) is a function of the arrays computed here, so the model runs once per item whatever the number of
metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from llm_unlearn.data.formatting import IGNORE_INDEX, PaddingCollator


@dataclass
class ItemStatistics:
    """Teacher-forced statistics of one item's labelled (answer) tokens, in token order."""

    logprobs: np.ndarray  # float32, log p(y_t | x, y_<t)
    argmax_hits: np.ndarray  # bool, argmax of the logits at that position == y_t
    # float32, only with `distribution_stats=True`: mean and standard deviation of log p_v under the model's
    # own next-token distribution p at that position (Min-K%++, Zhang et al. 2024; REFERENCE.md section 3).
    position_mean: np.ndarray | None = None  # mu_t = sum_v p_v log p_v
    position_std: np.ndarray | None = None  # sigma_t = sqrt(sum_v p_v (log p_v)^2 - mu_t^2)

    @property
    def num_tokens(self) -> int:
        """Number of labelled tokens |y|."""
        return int(self.logprobs.shape[0])

    @property
    def nll(self) -> float:
        """Mean token negative log-likelihood NLL(y|x) = -(1/|y|) sum_t lp_t."""
        return float(-self.logprobs.mean(dtype=np.float64))

    @property
    def seq_logprob(self) -> float:
        """Sequence log-probability seqlogp(y|x) = sum_t lp_t."""
        return float(self.logprobs.sum(dtype=np.float64))


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    # Longest first: neighbours in length share a batch (little padding), and an out-of-memory error, if any,
    # happens on the first batch rather than after minutes of work.
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _distribution_statistics(logits: torch.Tensor, log_normalizer: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean mu_t = sum_v p_v log p_v and standard deviation sigma_t of log p under the next-token distribution
    at each row of `logits` `[N, V]` (Min-K%++, Zhang et al. 2024; REFERENCE.md section 3)."""
    log_probs = logits - log_normalizer.unsqueeze(-1)
    probs = log_probs.exp()
    # A -inf logit (a masked vocabulary entry) has p = 0: count its terms as 0 * 0 rather than 0 * -inf = NaN.
    log_probs = log_probs.masked_fill(torch.isneginf(log_probs), 0.0)
    mean = (probs * log_probs).sum(dim=-1)
    # sum_v p_v (log p_v - mu)^2 equals sum_v p_v (log p_v)^2 - mu^2, without the float32 cancellation of
    # subtracting two large nearly equal numbers.
    variance = (probs * (log_probs - mean.unsqueeze(-1)).square()).sum(dim=-1)
    return {"position_mean": mean, "position_std": variance.sqrt()}


def _position_statistics(
    logits: torch.Tensor, targets: torch.Tensor, distribution_stats: bool = False
) -> dict[str, torch.Tensor]:
    """Statistics of the labelled positions from their logits `[N, V]` (float32) and targets `[N]`; with
    `distribution_stats`, also the per-position mean and standard deviation of log p (Min-K%++), from the same
    logits with no second pass."""
    # logit[target] - logsumexp(logits) is log_softmax at the target only, without a [N, V] log-softmax tensor.
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    log_normalizer = torch.logsumexp(logits, dim=-1)
    stats = {
        "logprobs": target_logits - log_normalizer,
        "argmax_hits": logits.argmax(dim=-1) == targets,
    }
    if distribution_stats:
        # Only Min-K%++ needs the full distribution, so only then pay for [N, V] log-probabilities.
        stats.update(_distribution_statistics(logits, log_normalizer))
    return stats


def _supports_logits_to_keep(model: PreTrainedModel) -> bool:
    check = getattr(model, "_supports_logits_to_keep", None)
    return bool(check is not None and check())


def compute_item_statistics(
    model: PreTrainedModel,
    encoded: Sequence[dict[str, Any]],
    *,
    batch_size: int = 16,
    pad_token_id: int,
    progress: str | None = None,
    distribution_stats: bool = False,
) -> list[ItemStatistics]:
    """Run one teacher-forced pass over `encoded` items (`input_ids` + `labels`, -100 = not scored) and return
    the statistics of each item's labelled tokens, in input order; `distribution_stats=True` adds the
    per-position `position_mean` / `position_std` that Min-K%++ needs (REFERENCE.md section 3)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for index, item in enumerate(encoded):
        if not any(label != IGNORE_INDEX for label in item["labels"][1:]):
            raise ValueError(
                f"item {index} has no labelled token after the first position; nothing to score."
            )

    collate = PaddingCollator(pad_token_id=pad_token_id)
    keep_logits_window = _supports_logits_to_keep(model)
    by_index: dict[int, ItemStatistics] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(encoded), desc=progress, disable=progress is None) as bar:
            for batch_indices in _length_sorted_batches([len(e["input_ids"]) for e in encoded], batch_size):
                batch = collate([encoded[i] for i in batch_indices])
                # The logits at position t predict token t + 1.
                targets = torch.full_like(batch["labels"], IGNORE_INDEX)
                targets[:, :-1] = batch["labels"][:, 1:]
                scored = targets != IGNORE_INDEX
                kwargs: dict[str, Any] = {}
                if keep_logits_window:
                    # Project to the vocabulary only from the first position that predicts a label: prompt
                    # positions would cost a [batch, prompt, vocab] tensor for nothing.
                    first = int(scored.any(dim=0).nonzero()[0])
                    kwargs["logits_to_keep"] = scored.shape[1] - first
                    targets, scored = targets[:, first:], scored[:, first:]
                logits = model(
                    input_ids=batch["input_ids"].to(model.device),
                    attention_mask=batch["attention_mask"].to(model.device),
                    use_cache=False,
                    **kwargs,
                ).logits
                scored_device = scored.to(logits.device)
                # Row-major boolean indexing keeps each row's positions together and in order.
                stats = _position_statistics(
                    logits[scored_device].float(),
                    targets.to(logits.device)[scored_device],
                    distribution_stats=distribution_stats,
                )
                arrays = {name: value.cpu().numpy() for name, value in stats.items()}
                bounds = np.cumsum(scored.sum(dim=1).numpy())[:-1]
                split = {name: np.split(value, bounds) for name, value in arrays.items()}
                for row, index in enumerate(batch_indices):
                    by_index[index] = ItemStatistics(**{name: parts[row] for name, parts in split.items()})
                bar.update(len(batch_indices))
    finally:
        model.train(was_training)
    return [by_index[index] for index in range(len(encoded))]
