"""The one teacher-forced pass: per answer token log-probabilities and argmax hits (docs/metrics.md#how-items-are-scored),
and on request the per-position distribution statistics of Min-K%++ (docs/metrics.md#min_k_plus_plus).

Every logit-based metric (probability, truth ratio, exact memorization, extraction strength, LOSS, zlib,
Min-K%, ...) is a function of the arrays computed here, so the model runs once per item whatever the number of
metrics. `compute_item_statistics` scores independent sequences; `score_answer_groups` scores several answers
to one prompt (an item's paraphrased and perturbed answers) and runs that prompt once, continuing every answer
from its key/value cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from llm_unlearn import compat
from llm_unlearn.data.formatting import IGNORE_INDEX, PaddingCollator
from llm_unlearn.evaluation.generation import batches_of_rows, prefill_prompts


@dataclass
class ItemStatistics:
    """Teacher-forced statistics of one item's labelled (answer) tokens, in token order."""

    logprobs: np.ndarray  # float32, log p(y_t | x, y_<t)
    argmax_hits: np.ndarray  # bool, argmax of the logits at that position == y_t
    # float32, only with `distribution_stats=True`: mean and standard deviation of log p_v under the model's
    # own next-token distribution p at that position (Min-K%++, Zhang et al. 2024; docs/metrics.md#min_k_plus_plus).
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
    at each row of `logits` `[N, V]` (Min-K%++, Zhang et al. 2024; docs/metrics.md#min_k_plus_plus)."""
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
    per-position `position_mean` / `position_std` that Min-K%++ needs (docs/metrics.md#min_k_plus_plus)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for index, item in enumerate(encoded):
        if not any(label != IGNORE_INDEX for label in item["labels"][1:]):
            raise ValueError(
                f"item {index} has no labelled token after the first position; nothing to score."
            )

    collate = PaddingCollator(pad_token_id=pad_token_id)
    # A causal LM whose forward declares `logits_to_keep` projects only the last that many positions.
    keep_logits_window = "logits_to_keep" in compat.forward_parameters(model)
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


@dataclass
class AnswerGroup:
    """Answers scored against one shared prompt, e.g. a question's paraphrased and perturbed answers."""

    prompt_ids: list[int]  # the shared prompt (the chat-formatted question); not scored
    answer_ids: list[list[int]]  # each answer's tokens, a continuation of the prompt; every token is scored


def _check_groups(groups: Sequence[AnswerGroup]) -> None:
    for index, group in enumerate(groups):
        if not group.prompt_ids:
            raise ValueError(
                f"answer group {index} has an empty prompt; the first answer token is predicted from the "
                "prompt's last token, so a prompt needs at least one token."
            )
        if not group.answer_ids:
            raise ValueError(f"answer group {index} has no answers; give at least one answer per group.")
        empty = [position for position, answer in enumerate(group.answer_ids) if not answer]
        if empty:
            raise ValueError(
                f"answer group {index} has empty answers at positions {empty}; every answer needs a token."
            )


def _score_as_sequences(
    model: PreTrainedModel,
    groups: Sequence[AnswerGroup],
    *,
    batch_size: int,
    pad_token_id: int,
    distribution_stats: bool,
    progress: str | None,
) -> list[list[ItemStatistics]]:
    """`score_answer_groups` for a model that cannot continue a prompt from its cache: every answer as its own
    sequence prompt + answer (the prompt runs once per answer)."""

    def encoded(group: AnswerGroup, answer: list[int]) -> dict[str, list[int]]:
        return {
            "input_ids": group.prompt_ids + answer,
            "labels": [IGNORE_INDEX] * len(group.prompt_ids) + answer,
        }

    common = {"batch_size": batch_size, "pad_token_id": pad_token_id, "progress": progress}
    own = compute_item_statistics(
        model, [encoded(g, g.answer_ids[0]) for g in groups], distribution_stats=distribution_stats, **common
    )
    others = iter(
        compute_item_statistics(model, [encoded(g, a) for g in groups for a in g.answer_ids[1:]], **common)
    )
    return [
        [stats, *(next(others) for _ in group.answer_ids[1:])]
        for stats, group in zip(own, groups, strict=True)
    ]


def _score_batch(
    model: PreTrainedModel,
    groups: Sequence[AnswerGroup],
    batch: Sequence[tuple[int, range]],
    *,
    pad_token_id: int,
    distribution_stats: bool,
) -> list[ItemStatistics]:
    """Statistics of the answers in `batch` (`(group, answer indices)` pairs), in that order: one forward of
    the batch's prompts, then one of all its answers, each continuing from its prompt's key/value cache."""
    state = prefill_prompts(model, [groups[group].prompt_ids for group, _ in batch], pad_token_id)
    answers = [groups[group].answer_ids[answer] for group, indices in batch for answer in indices]
    # Min-K%++ needs the distribution statistics of the item's own answer (the first) only.
    own = [distribution_stats and answer == 0 for _, indices in batch for answer in indices]
    state.select_rows(
        torch.tensor([position for position, (_, indices) in enumerate(batch) for _ in indices])
    )
    device = state.last_logits.device
    own_rows = torch.tensor(own, device=device)

    def row_statistics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
        stats = _position_statistics(logits, targets)
        if any(own):
            own_logits = logits[own_rows]
            stats.update(_distribution_statistics(own_logits, torch.logsumexp(own_logits, dim=-1)))
        return {name: value.cpu().numpy() for name, value in stats.items()}

    # The prompt's last logits predict each answer's first token.
    first = row_statistics(
        state.last_logits.float(), torch.tensor([answer[0] for answer in answers], device=device)
    )
    # Answer token t predicts token t + 1, so an answer's last token is never fed to the model.
    width = max(len(answer) for answer in answers) - 1
    if width:
        input_ids = torch.full((len(answers), width), pad_token_id, dtype=torch.long)
        targets = torch.zeros((len(answers), width), dtype=torch.long)  # any valid id at padding; never read
        attention_mask = torch.zeros((len(answers), width), dtype=torch.long)
        for row, answer in enumerate(answers):
            input_ids[row, : len(answer) - 1] = torch.as_tensor(answer[:-1])
            targets[row, : len(answer) - 1] = torch.as_tensor(answer[1:])
            attention_mask[row, : len(answer) - 1] = 1
        logits = state.extend(model, input_ids.to(device), attention_mask.to(device))
        rest = row_statistics(logits.float(), targets.to(logits.device))
    else:
        rest = {name: values[:, None][:, :0] for name, values in first.items()}

    # Row `row` of the distribution statistics belongs to the `own_index[row]`-th row with `own` set.
    own_index = np.cumsum(own) - 1
    results = []
    for row, answer in enumerate(answers):
        names = ["logprobs", "argmax_hits"] + (["position_mean", "position_std"] if own[row] else [])
        fields = {}
        for name in names:
            index = row if name in ("logprobs", "argmax_hits") else own_index[row]
            fields[name] = np.concatenate(
                [first[name][index : index + 1], rest[name][index, : len(answer) - 1]]
            )
        results.append(ItemStatistics(**fields))
    return results


def score_answer_groups(
    model: PreTrainedModel,
    groups: Sequence[AnswerGroup],
    *,
    batch_size: int = 16,
    pad_token_id: int,
    distribution_stats: bool = False,
    progress: str | None = None,
) -> list[list[ItemStatistics]]:
    """Teacher-forced statistics of every answer of every group, as `compute_item_statistics` gives them for
    the sequence prompt + answer with the prompt masked, but with each prompt run once: the answers continue
    from its key/value cache. Returns one list per group, one `ItemStatistics` per answer, in input order.

    `batch_size` is the number of answer rows per forward; a batch holds whole groups (a group with more
    answers is split, its prompt then runs once per part), longest answers first to cut padding.
    `distribution_stats=True` adds Min-K%++'s `position_mean` / `position_std` (docs/metrics.md#min_k_plus_plus) to
    the FIRST answer of each group only (the item's own answer; the others, paraphrased or perturbed, only
    need log-probs); the other answers have None there. A model that cannot continue from a cache
    (`compat.continues_from_cache`) is scored with every answer as its own sequence instead: the same
    numbers, slower. "The same" holds in float32 (log-probs within 1e-4); in bfloat16 the cached and the
    whole-sequence forward round differently, and an answer's summed log-prob can differ by a few tenths of a
    nat (0.35 at most in benchmarks/eval_passes.py on an H100), so compare bf16 evals only with bf16 evals."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    _check_groups(groups)
    if not compat.continues_from_cache(model):
        return _score_as_sequences(
            model,
            groups,
            batch_size=batch_size,
            pad_token_id=pad_token_id,
            distribution_stats=distribution_stats,
            progress=progress,
        )
    answer_counts = [len(group.answer_ids) for group in groups]
    longest = [max(len(answer) for answer in group.answer_ids) for group in groups]
    # The answers are most of the compute (several rows per prompt), so their padding matters most.
    order = sorted(range(len(groups)), key=lambda i: (longest[i], len(groups[i].prompt_ids)), reverse=True)
    results: list[list[ItemStatistics]] = [[] for _ in groups]
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=sum(answer_counts), desc=progress, disable=progress is None) as bar,
        ):
            for batch in batches_of_rows(answer_counts, order, batch_size):
                scored = _score_batch(
                    model, groups, batch, pad_token_id=pad_token_id, distribution_stats=distribution_stats
                )
                rows = [group for group, indices in batch for _ in indices]
                # A split group's parts come in answer order, so appending keeps each group's order.
                for group, stats in zip(rows, scored, strict=True):
                    results[group].append(stats)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return results
