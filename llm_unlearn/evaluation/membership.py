"""Membership inference over an evaluation result: AUC of each per-item score between the forget items (members)
and holdout items (never trained on), and MUSE's PrivLeak against the retain model (docs/metrics.md#membership-inference)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from llm_unlearn.evaluation import aggregate
from llm_unlearn.evaluation.results import SOURCE_FORMAT

# Scores, all oriented "higher = looks less like a member". All but `loss_minus_reference` are per-item metrics
# of the evaluated model; that one needs the reference (retain) model's per-item LOSS from its eval.json.
MIA_SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus", "loss_minus_reference", "gradnorm")
REFERENCE_SCORE = "loss_minus_reference"


def check_scores(scores: Sequence[str]) -> None:
    """Raise ValueError naming an unknown membership score and the known ones."""
    unknown = [score for score in scores if score not in MIA_SCORES]
    if unknown:
        raise ValueError(f"unknown membership score(s) {unknown}; known scores are {list(MIA_SCORES)}.")


def metrics_for(scores: Sequence[str]) -> list[str]:
    """The per-item metrics the member and nonmember splits need for `scores`."""
    return sorted({"loss" if score == REFERENCE_SCORE else score for score in scores})


def _items(result: Mapping[str, Any], split: str, owner: str) -> list[dict[str, Any]]:
    if split not in result.get("splits", {}):
        raise ValueError(
            f"membership inference needs the split {split!r}, which the {owner} did not evaluate."
        )
    return result["splits"][split]["items"]


def add_reference_scores(result: dict[str, Any], reference: Mapping[str, Any], splits: Sequence[str]) -> None:
    """Store `loss_minus_reference` = NLL_model - NLL_reference (docs/metrics.md#loss_minus_reference) on every item of
    `splits`, matching items by position and checking that both evals scored the same questions."""
    for split in splits:
        items = _items(result, split, "evaluated model")
        reference_items = _items(reference, split, "reference eval")
        if len(items) != len(reference_items) or any(
            item.get("question") != ref.get("question") or item.get("answer") != ref.get("answer")
            for item, ref in zip(items, reference_items, strict=False)
        ):
            raise ValueError(
                f"the reference eval scored different {split!r} items than this eval ({len(reference_items)} vs "
                f"{len(items)} items, or other questions); evaluate both with the same suite, data and max_items."
            )
        for item, ref in zip(items, reference_items, strict=True):
            if ref.get("loss") is None:
                raise ValueError(f"the reference eval has no per-item 'loss' on split {split!r}; re-run it.")
            item[REFERENCE_SCORE] = item["loss"] - ref["loss"]


def membership_inference(
    result: dict[str, Any],
    *,
    members: str,
    nonmembers: str,
    scores: Sequence[str],
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """AUC of each score between `members` (labelled 0) and `nonmembers` (labelled 1) items of `result`, with
    its bootstrap 95% interval and sample sizes; near 1: the members look like training data, 0.5:
    indistinguishable (docs/metrics.md#auc). The reference-model score needs `reference`, an eval.json of this
    project; without one, that score says why it is missing."""
    check_scores(scores)
    # Another framework's log has no per-item losses of these items, matched by question, to subtract.
    foreign = reference is not None and SOURCE_FORMAT in reference
    if REFERENCE_SCORE in scores and reference is not None and not foreign:
        add_reference_scores(result, reference, [members, nonmembers])
    member_items = _items(result, members, "evaluated model")
    nonmember_items = _items(result, nonmembers, "evaluated model")
    section: dict[str, Any] = {"members": members, "nonmembers": nonmembers, "scores": {}}
    for score in scores:
        if score == REFERENCE_SCORE and reference is None:
            section["scores"][score] = {
                "auc": None,
                "reason": "no reference eval given (pass --reference_eval retain/eval.json)",
            }
            continue
        if score == REFERENCE_SCORE and foreign:
            section["scores"][score] = {
                "auc": None,
                "reason": f"the reference eval is a log of {reference[SOURCE_FORMAT]}, without per-item losses of "
                "these items; this score needs the retain model's eval.json",
            }
            continue
        member_values = [item[score] for item in member_items]
        nonmember_values = [item[score] for item in nonmember_items]
        low, high = aggregate.bootstrap_ci_two_sample(
            member_values, nonmember_values, aggregate.roc_auc_batched
        )
        section["scores"][score] = {
            "auc": aggregate.roc_auc(member_values, nonmember_values),
            "ci_low": low,
            "ci_high": high,
            "n_members": len(member_values),
            "n_nonmembers": len(nonmember_values),
        }
    return section


def privleak_summary(
    mia: Mapping[str, Any] | None,
    reference: Mapping[str, Any] | None,
    score: str,
    *,
    published_auc: float | None = None,
) -> dict[str, Any]:
    """MUSE PrivLeak of this model against the retain model's eval `reference`, from the AUCs of `score` (MUSE:
    Min-40%, `min_k`) on the same member and nonmember splits (docs/metrics.md#privleak), or why it is missing.
    Without a reference, against `published_auc` when given (a published retrained model's AUC in MUSE's
    orientation, as MUSE's own code does), and labelled so (`reference: "published"`); a reference read from
    another framework's log is labelled with it (`reference_format`)."""
    if mia is None:
        return {"value": None, "reason": "no membership inference was run (the suite has no 'mia' section)"}
    if score not in mia["scores"]:
        return {"value": None, "reason": f"the suite's membership scores do not include {score!r}"}
    source = "reference eval"
    if reference is None and published_auc is not None:
        # Published in MUSE's orientation; the summary's AUCs are roc_auc(forget, holdout).
        reference_auc, source = 1.0 - published_auc, "published"
    elif reference is None:
        return {"value": None, "reason": "no reference eval given (pass --reference_eval retain/eval.json)"}
    else:
        reference_mia = reference.get("mia") or {}
        reference_auc = (reference_mia.get("scores") or {}).get(score, {}).get("auc")
        if reference_auc is None or (reference_mia["members"], reference_mia["nonmembers"]) != (
            mia["members"],
            mia["nonmembers"],
        ):
            return {
                "value": None,
                "reason": f"the reference eval has no {score!r} AUC on the same member/nonmember splits; "
                f"evaluate the retain model with the same suite",
            }
    auc = mia["scores"][score]["auc"]
    if math.isclose(reference_auc, 1.0):
        return {"value": None, "reason": "the reference model's AUC is 1 (MUSE orientation 0): undefined"}
    # PrivLeak falls as the AUC rises (the reference held fixed), so the AUC's interval maps to PrivLeak's, reversed.
    low, high = (
        aggregate.privleak(mia["scores"][score][bound], reference_auc, orientation="roc_auc")
        if mia["scores"][score].get(bound) is not None
        else math.nan
        for bound in ("ci_high", "ci_low")
    )
    summary = {
        "value": aggregate.privleak(auc, reference_auc, orientation="roc_auc"),
        "score": score,
        "auc": auc,
        "reference_auc": reference_auc,
        "reference": source,
        "ci_low": low,
        "ci_high": high,
    }
    if reference is not None and SOURCE_FORMAT in reference:
        summary["reference_format"] = reference[SOURCE_FORMAT]
    return summary
