"""Batched greedy decoding from already formatted prompts (for ROUGE and other generation metrics)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

# Plain greedy decoding: neutral values for every flag a model's own generation_config.json may set (sampling
# flags would be ignored with a warning; penalties would silently change the greedy output).
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


def greedy_generation_config(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
) -> GenerationConfig:
    """Return the model's generation config turned into plain greedy decoding that stops at eos (and at
    `stop_strings`); `generate_greedy` sets `max_length` per batch to the prompt width + `max_new_tokens`."""
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise ValueError(
            f"the tokenizer {tokenizer.name_or_path!r} has neither a pad token nor an eos token."
        )
    config = copy.deepcopy(model.generation_config)
    config.update(
        **_GREEDY,
        pad_token_id=pad_token_id,
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


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = min((position for stop in stop_strings if (position := text.find(stop)) >= 0), default=len(text))
    return text[:cut]


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress: str | None = None,
) -> list[str]:
    """Greedy completions of formatted `prompts` (no special tokens added), each cut at its first stop string and
    stripped of surrounding whitespace, in input order."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size and max_new_tokens must be at least 1, got {batch_size} and {max_new_tokens}."
        )
    if not prompts:
        return []
    generation_config = greedy_generation_config(
        model, tokenizer, max_new_tokens=max_new_tokens, stop_strings=stop_strings
    )
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    # Similar prompt lengths per batch keep left padding short.
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]), reverse=True)
    completions: dict[int, str] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), desc=progress, disable=progress is None) as bar:
            for start in range(0, len(order), batch_size):
                batch_indices = order[start : start + batch_size]
                inputs = _left_pad([prompt_ids[i] for i in batch_indices], generation_config.pad_token_id)
                inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
                # The bound is `max_length` = prompt width + max_new_tokens, not `max_new_tokens`: generate() merges
                # in the model's own `max_length` (Llama-2 sets 4096) and warns when it sees both.
                generation_config.max_length = inputs["input_ids"].shape[1] + max_new_tokens
                output = model.generate(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    generation_config=generation_config,
                    # generate() needs the tokenizer to detect stop strings (so finished rows stop early).
                    tokenizer=tokenizer if stop_strings else None,
                )
                texts = tokenizer.batch_decode(
                    output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                for index, text in zip(batch_indices, texts, strict=True):
                    completions[index] = _cut_at_stop(text, stop_strings).strip()
                bar.update(len(batch_indices))
    finally:
        model.train(was_training)
    return [completions[index] for index in range(len(prompts))]
