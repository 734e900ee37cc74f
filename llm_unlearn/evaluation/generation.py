"""Batched decoding from tokenized prompts: greedy (for ROUGE and other generation metrics) and sampled (for
the leak@k attack, docs/attacks.md#sampling). The prompts are token ids, an evaluation item's `prompt_ids`, so
a completion continues exactly the tokens that teacher-forced scoring reads (with a BOS token where the items
have one).

Both run one decode loop over a key/value cache: the left-padded prompts of a batch go through the model once
(the prefill), then each step feeds one token per row. A row leaves the batch as soon as it is finished (it
produced an eos token, its text contains a stop string, or it reached `max_new_tokens`), so later steps
compute only the rows still running instead of padding finished ones to the longest. The prompt cache is also
what `statistics.score_answer_groups` continues from, so its helpers live here too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Cache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from llm_unlearn import compat

# Plain greedy decoding: neutral values for every flag a model's own generation_config.json may set (sampling
# flags would be ignored with a warning; penalties would silently change the greedy output). The decode loop
# below is plain greedy by construction; this config gives `model.generate` the same behaviour (the reference
# that the tests and benchmarks/decoding.py compare against).
_GREEDY = {
    "do_sample": False,
    "num_beams": 1,
    "num_return_sequences": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "length_penalty": 1.0,
    "early_stopping": False,
    "min_length": 0,
}


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    configured = model.generation_config.eos_token_id
    if configured is not None:
        ids += [configured] if isinstance(configured, int) else list(configured)
    return sorted(set(ids))


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise ValueError(
            f"the tokenizer {tokenizer.name_or_path!r} has neither a pad token nor an eos token."
        )
    return pad_token_id


def greedy_generation_config(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
) -> GenerationConfig:
    """Return the model's generation config turned into plain greedy decoding that stops at eos (and at
    `stop_strings`): what `model.generate` needs to decode as `generate_greedy` does. Set its `max_length` per
    batch to the prompt width + `max_new_tokens`."""
    config = copy.deepcopy(model.generation_config)
    config.update(
        **_GREEDY,
        pad_token_id=_pad_token_id(tokenizer),
        eos_token_id=_eos_token_ids(model, tokenizer),
        stop_strings=list(stop_strings) or None,
    )
    # A model's own `max_new_tokens` would take precedence over the per-batch `max_length`.
    if model.generation_config.max_new_tokens is not None:
        config.max_new_tokens = max_new_tokens
    return config


def _left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    # Built here rather than by the tokenizer so that the caller's tokenizer (right padding for training) is
    # never touched; the mask comes from the true lengths (the pad token may be the end-of-turn token).
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@dataclass
class PromptCache:
    """The key/value cache of a batch of left-padded prompts, with what continuing them needs."""

    cache: Cache
    attention_mask: torch.Tensor  # [rows, cached positions], 0 at padding
    next_positions: torch.Tensor  # [rows], the position id of each row's next token (its true length so far)
    last_logits: torch.Tensor  # [rows, vocab], the logits that predict each row's next token

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the given rows, in that order; an index may repeat (one prompt row becomes one row per answer
        or sample) or be left out (a finished row leaves the batch)."""
        rows = rows.to(self.attention_mask.device)
        compat.select_cache_rows(self.cache, rows)
        self.attention_mask = self.attention_mask[rows]
        self.next_positions = self.next_positions[rows]
        self.last_logits = self.last_logits[rows.to(self.last_logits.device)]

    def extend(
        self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Run `input_ids` `[rows, T]` (right-padded where `attention_mask` is 0) after the cached positions,
        keep their keys/values, and return their logits `[rows, T, vocab]` (`last_logits` is left to the
        caller: with right padding, a row's last token is not in the last column)."""
        steps = torch.arange(input_ids.shape[1], device=self.next_positions.device)
        self.attention_mask = torch.cat([self.attention_mask, attention_mask], dim=1)
        logits = model(
            input_ids=input_ids,
            attention_mask=self.attention_mask,
            position_ids=self.next_positions.unsqueeze(1) + steps,
            use_cache=True,
            **compat.cache_kwargs(model, self.cache),
        ).logits
        self.next_positions = self.next_positions + attention_mask.sum(dim=1)
        return logits


def prefill_prompts(
    model: PreTrainedModel, prompt_ids: Sequence[Sequence[int]], pad_token_id: int
) -> PromptCache:
    """Run a batch of prompts (token ids, left-padded here) through `model` once with a key/value cache,
    keeping only the logits of each prompt's last token."""
    inputs = {name: tensor.to(model.device) for name, tensor in _left_pad(prompt_ids, pad_token_id).items()}
    attention_mask = inputs["attention_mask"]
    # Explicit positions: with left padding each row's first real token is position 0, as without padding.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in compat.forward_parameters(model) else {}
    output = model(**inputs, position_ids=position_ids, use_cache=True, **kwargs)
    cache = compat.output_cache(output)
    if not isinstance(cache, Cache):
        raise TypeError(
            f"{type(compat.unwrap_peft(model)).__name__} returned a {type(cache).__name__} as its cache; "
            "continuing prompts from their cache needs a transformers `Cache`."
        )
    return PromptCache(
        cache=cache,
        attention_mask=attention_mask,
        next_positions=attention_mask.sum(dim=1),
        last_logits=output.logits[:, -1],
    )


def batches_of_rows(
    row_counts: Sequence[int], order: Sequence[int], batch_size: int
) -> list[list[tuple[int, range]]]:
    """Group the rows of items (item i has `row_counts[i]` rows: answers, samples) into batches of at most
    `batch_size` rows, taking items in `order`; an item's rows share a batch (and so one prompt in the
    prefill) unless it alone has more than `batch_size` rows. Each batch is a list of `(item, its rows)`."""
    batches: list[list[tuple[int, range]]] = []
    current: list[tuple[int, range]] = []
    filled = 0
    for item in order:
        for start in range(0, row_counts[item], batch_size):
            rows = range(start, min(start + batch_size, row_counts[item]))
            if filled + len(rows) > batch_size:
                batches.append(current)
                current, filled = [], 0
            current.append((item, rows))
            filled += len(rows)
    if current:
        batches.append(current)
    return batches


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = min((position for stop in stop_strings if (position := text.find(stop)) >= 0), default=len(text))
    return text[:cut]


# Picks the next token of each running row from its next-token logits `[rows, vocab]` (float32); the second
# argument holds the rows' indices in the batch as it started, so a sampler can use each row's own generator.
TokenChooser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _greedy_choice(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


class _NucleusSampler:
    """Temperature + nucleus (top-p) sampling (Holtzman et al. 2020) with one random stream per row: each row
    draws one uniform number per step from its own generator, so its tokens do not depend on other rows."""

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int]) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        uniforms = torch.cat(
            [torch.rand(1, generator=self.generators[row], dtype=torch.float64) for row in rows.tolist()]
        ).to(logits.device)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p >= 1:
            # The whole distribution: no sort needed (over a large vocabulary it costs more than the model's
            # step on a CPU); the inverse transform below then runs over the tokens in id order.
            kept, token_ids = probs.double(), None
        else:
            # Stable: among equal probabilities the lowest token id comes first, as in argmax.
            sorted_probs, token_ids = probs.sort(dim=-1, descending=True, stable=True)
            # The nucleus is the smallest set of most likely tokens whose mass reaches top_p: a token stays if
            # the mass before it is still below top_p (so the most likely token always stays).
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            kept = sorted_probs.masked_fill(mass_before >= self.top_p, 0.0).double()
        # Inverse transform sampling: the first token whose cumulative kept mass exceeds u * (kept mass).
        cumulative = kept.cumsum(dim=-1)
        targets = (uniforms * cumulative[:, -1]).unsqueeze(-1)
        picked = torch.searchsorted(cumulative, targets, right=True).clamp(max=kept.shape[-1] - 1)
        return (picked if token_ids is None else token_ids.gather(-1, picked)).squeeze(-1)


def _decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: PromptCache,
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    stop_strings: Sequence[str],
    choose: TokenChooser,
) -> list[list[int]]:
    """New tokens of every row of `state`, one step at a time; finished rows leave the batch."""
    device = state.attention_mask.device
    generated: list[list[int]] = [[] for _ in range(state.attention_mask.shape[0])]
    running = torch.arange(len(generated), device=device)
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        tokens = choose(state.last_logits.float(), running).to(device)
        for row, token in zip(running.tolist(), tokens.tolist(), strict=True):
            generated[row].append(token)
        if step + 1 == max_new_tokens:
            break
        finished = torch.isin(tokens, eos)
        if stop_strings:
            texts = tokenizer.batch_decode(
                [generated[row] for row in running.tolist()], skip_special_tokens=True
            )
            stopped = [any(stop in text for stop in stop_strings) for text in texts]
            finished |= torch.tensor(stopped, device=device)
        if finished.all():
            break
        if finished.any():
            keep = (~finished).nonzero().squeeze(1)
            state.select_rows(keep)
            running, tokens = running[keep], tokens[keep]
        step_inputs = tokens.unsqueeze(1)
        state.last_logits = state.extend(model, step_inputs, torch.ones_like(step_inputs))[:, -1]
    return generated


def _check_prompts(prompt_ids: Sequence[Sequence[int]]) -> None:
    # A string would otherwise fail deep in the prefill; a prompt of no tokens has no token to continue from.
    for index, ids in enumerate(prompt_ids):
        if isinstance(ids, str):
            raise ValueError(
                f"prompt {index} is a string; give each prompt as token ids, tokenized as evaluation items "
                "are (an EvalItem's prompt_ids)."
            )
        if not len(ids):
            raise ValueError(f"prompt {index} has no tokens; there is nothing to continue.")


def _complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    num_samples: int,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str],
    progress: str | None,
    make_chooser: Callable[[list[tuple[int, int]]], TokenChooser],
) -> list[list[str]]:
    """`num_samples` completions of each prompt, in input order: each batch prefills its prompts once,
    repeats every prompt's cache row once per sample, and decodes with the chooser made for its (prompt,
    sample) rows."""
    if not compat.continues_from_cache(model):
        raise ValueError(
            f"{type(model).__name__} cannot continue prompts from a key/value cache (its forward needs a "
            "cache argument and `position_ids`, and no recurrent state), which decoding here relies on."
        )
    pad_token_id = _pad_token_id(tokenizer)
    eos_token_ids = _eos_token_ids(model, tokenizer)
    # Similar prompt lengths per batch keep left padding short.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]), reverse=True)
    completions: list[list[str]] = [[""] * num_samples for _ in prompt_ids]
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(prompt_ids) * num_samples, desc=progress, disable=progress is None) as bar,
        ):
            for batch in batches_of_rows([num_samples] * len(prompt_ids), order, batch_size):
                state = prefill_prompts(model, [prompt_ids[index] for index, _ in batch], pad_token_id)
                rows = [(index, sample) for index, samples in batch for sample in samples]
                prompt_row = [position for position, (_, samples) in enumerate(batch) for _ in samples]
                if len(rows) > len(batch):
                    state.select_rows(torch.tensor(prompt_row))
                generated = _decode(
                    model,
                    tokenizer,
                    state,
                    max_new_tokens=max_new_tokens,
                    eos_token_ids=eos_token_ids,
                    stop_strings=stop_strings,
                    choose=make_chooser(rows),
                )
                texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
                for (index, sample), text in zip(rows, texts, strict=True):
                    completions[index][sample] = _cut_at_stop(text, stop_strings).strip()
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return completions


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress: str | None = None,
) -> list[str]:
    """Greedy completions of the tokenized prompts `prompt_ids` (decoded from exactly these tokens, nothing
    added), each cut at its first stop string and stripped of surrounding whitespace, in input order.

    A completion ends at the first eos token (the tokenizer's and those of the model's generation config), at
    `max_new_tokens`, or once its text contains a stop string; the tokens equal those of greedy
    `model.generate` with `greedy_generation_config`, while finished rows stop costing compute."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size and max_new_tokens must be at least 1, got {batch_size} and {max_new_tokens}."
        )
    _check_prompts(prompt_ids)
    if not prompt_ids:
        return []
    completions = _complete(
        model,
        tokenizer,
        prompt_ids,
        num_samples=1,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_strings=stop_strings,
        progress=progress,
        make_chooser=lambda rows: _greedy_choice,
    )
    return [samples[0] for samples in completions]


def _sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    # A hash of the three numbers (not their sum), so that nearby seeds do not share streams.
    return int(
        np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1, dtype=np.uint64)[0]
    )


def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    seed: int = 0,
    progress: str | None = None,
) -> list[list[str]]:
    """`num_samples` sampled completions of each tokenized prompt (temperature, then nucleus top-p filtering),
    for the leak@k attack (docs/attacks.md#sampling): does any of k samples at normal temperature leak the
    answer?

    Each prompt runs through the model once; its cache row is then repeated once per sample. `batch_size`
    counts sequences decoded together (prompts x samples). Completions are cut and stripped as in
    `generate_greedy`.

    Reproducibility: sample j of prompt i draws its random numbers from its own generator, seeded from
    (seed, i, j). The same arguments on the same machine give the same samples, and the random draws do not
    depend on `batch_size` or on the other prompts; only floating-point rounding of the logits, which can vary
    with the batch shape or the device, can change a sample."""
    if num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            "num_samples, batch_size and max_new_tokens must be at least 1, got "
            f"{num_samples}, {batch_size} and {max_new_tokens}."
        )
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; use generate_greedy for greedy decoding."
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}; 1 keeps the whole distribution.")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    _check_prompts(prompt_ids)
    if not prompt_ids:
        return []

    def make_sampler(rows: list[tuple[int, int]]) -> TokenChooser:
        seeds = [_sample_seed(seed, index, sample) for index, sample in rows]
        return _NucleusSampler(temperature, top_p, seeds)

    return _complete(
        model,
        tokenizer,
        prompt_ids,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_strings=stop_strings,
        progress=progress,
        make_chooser=make_sampler,
    )
