"""Paraphrase attack (docs/attacks.md#paraphrase): ask the forget questions in other words. Unlearning that keyed on
the questions' wording rather than on the facts lets the answers through again."""

from __future__ import annotations

from llm_unlearn.evaluation.attacks.base import AttackContext, Remeasure, measure, register_attack


@register_attack("paraphrase")
def paraphrase(context: AttackContext) -> dict:
    """Re-measure the forget split with each question replaced by its `paraphrased_question`; items without one
    are left out, and the baseline is the main eval of the same items (docs/attacks.md#paraphrase)."""
    forget = context.split(context.forget_split)
    paraphrased = (
        forget["paraphrased_question"]
        if "paraphrased_question" in forget.column_names
        else [None] * len(forget)
    )
    indices = [index for index, question in enumerate(paraphrased) if question]
    if not indices:
        raise ValueError(
            f"split {context.forget_split!r} has no item with a 'paraphrased_question'; the paraphrase attack "
            f"needs that column (its columns are {forget.column_names})."
        )
    kept = forget.select(indices).remove_columns("question")
    kept = kept.add_column("question", [paraphrased[index] for index in indices])
    measured = measure(context, {context.forget_split: Remeasure(kept, context.forget_split, indices)})
    return {
        "description": f"forget questions replaced by their paraphrases ({len(indices)} of {len(forget)} items)",
        **measured,
    }
