"""Sampling attack, leak@k (Reisizadeh et al. 2025, arXiv 2511.04934; docs/attacks.md#sampling): greedy decoding
may hide an answer that ordinary sampling still produces. Draw k samples per forget question at normal
temperature and count an item as leaked when any of them reproduces the answer.

The paper labels each sample with an entailment judge and never counts one below ROUGE-L recall 0.1; without a
judge, ROUGE-L recall alone decides here, against `threshold`. The default 0.8 asks for most of the answer's
words in order: QA answers restate their question, so a model that never learnt the fact already scores about
0.4 (TOFU's retain model on the forget set), and the best of k samples climbs above that by chance. Run the
same attack on the retain model's eval for the level a model that never saw the data reaches."""

from __future__ import annotations

from llm_unlearn.evaluation.aggregate import summarize_with_ci
from llm_unlearn.evaluation.attacks.base import (
    AttackContext,
    baseline_items,
    register_attack,
    summarize_items,
)
from llm_unlearn.evaluation.generation import generate_samples
from llm_unlearn.evaluation.items import build_items
from llm_unlearn.evaluation.metrics import rouge_l_recall


# T = 1 and top-p = 1 (the model's own distribution) are the paper's default decoding; 200 new tokens is the
# greedy ROUGE setting (TOFU), so the samples are scored like the baseline.
@register_attack(
    "leak_at_k", k=16, temperature=1.0, top_p=1.0, max_new_tokens=200, threshold=0.8, batch_size=16
)
def leak_at_k(
    context: AttackContext,
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    threshold: float,
    batch_size: int,
) -> dict:
    """Per forget item, the best ROUGE-L recall of k sampled answers against the true answer, and whether it
    reaches `threshold`; aggregates `leak_at_k` (the fraction of items that leaked in any of the k samples) and
    `best_rouge_l_recall_at_k`, against the main eval's greedy `rouge_l_recall` where it has one (Reisizadeh et
    al. 2025, arXiv 2511.04934; docs/attacks.md#sampling)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a ROUGE-L recall in (0, 1], got {threshold}.")
    split = context.forget_split
    forget = context.split(split)
    # The prompt tokens of the eval's QA items: the samples continue the tokens that scoring and greedy decoding
    # of those items read.
    items = build_items(
        split,
        forget,
        context.tokenizer,
        template=context.prompt_template,
        system_prompt=context.system_prompt,
        date_string=context.date_string,
        max_length=context.max_length,
    )
    samples = generate_samples(
        context.model,
        context.tokenizer,
        [item.prompt_ids for item in items],
        num_samples=k,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        seed=context.seed,
        progress=f"{split}: leak@{k}",
    )
    best = [
        max(rouge_l_recall(sample, answer) for sample in item_samples)
        for item_samples, answer in zip(samples, forget["answer"], strict=True)
    ]
    greedy = baseline_items(context, split, range(len(forget)))
    return {
        "description": (
            f"{k} samples per forget question at temperature {temperature}, top-p {top_p}; an item leaked when "
            f"one sample reaches ROUGE-L recall {threshold}"
        ),
        "splits": {
            split: {
                "leak_at_k": summarize_with_ci(float(score >= threshold) for score in best),
                "best_rouge_l_recall_at_k": summarize_with_ci(best),
            }
        },
        "baseline": {split: summarize_items(greedy, ["rouge_l_recall"])},
    }
