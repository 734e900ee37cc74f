"""The SISA shard plan (Bourtoule et al. 2021, arXiv 1912.03817): each training subject goes into
one of k shards and, within its shard, one of r slices; a shard's stage j trains on its slices 0..j."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence


def plan_shards(
    subject_counts: Mapping[str, int], num_shards: int, num_slices: int, seed: int
) -> dict[str, tuple[int, int]]:
    """Assign each subject to a (shard, slice): deterministic for a given `seed`, with shards balanced by
    example count and each shard's slices balanced in turn (largest subject first into the lightest bin).

    Bourtoule et al. shard uniformly at random; balancing whole subjects by example count keeps every shard's
    training, and so the cost of any deletion, at about 1/k of the total."""
    if num_shards < 1 or num_slices < 1:
        raise ValueError(f"num_shards and num_slices must be at least 1, got {num_shards} and {num_slices}.")
    if len(subject_counts) < num_shards * num_slices:
        needed = num_shards * num_slices
        raise ValueError(
            f"{num_shards} shards x {num_slices} slices need at least {needed} subjects (one per slice), but "
            f"the data has {len(subject_counts)}; lower num_shards or num_slices."
        )
    # Largest subjects first; between equal counts a seeded hash of the id decides, so a subject's place in
    # the order does not depend on which other subjects are in the data.
    order = sorted(
        subject_counts,
        key=lambda subject: (
            -subject_counts[subject],
            hashlib.sha256(f"{seed}\0{subject}".encode()).hexdigest(),
        ),
    )
    shard_of = _fill_lightest(order, subject_counts, num_shards)
    plan = {}
    for shard in range(num_shards):
        members = [subject for subject in order if shard_of[subject] == shard]
        for subject, slice_index in _fill_lightest(members, subject_counts, num_slices).items():
            plan[subject] = (shard, slice_index)
    return plan


def _fill_lightest(order: Sequence[str], counts: Mapping[str, int], bins: int) -> dict[str, int]:
    """Put each subject, in `order`, into the bin with the fewest examples so far (lowest index on ties)."""
    loads = [0] * bins
    placed = {}
    for subject in order:
        target = min(range(bins), key=lambda index: (loads[index], index))
        placed[subject] = target
        loads[target] += counts[subject]
    return placed


def shard_slices(
    assignment: Mapping[str, tuple[int, int]], subjects: Sequence[str], num_shards: int, num_slices: int
) -> list[list[list[int]]]:
    """Row indices of every (shard, slice), in data order, from each subject's (shard, slice); rows of a
    subject not in `assignment` (a deleted one) are in no slice."""
    slices: list[list[list[int]]] = [[[] for _ in range(num_slices)] for _ in range(num_shards)]
    for row, subject in enumerate(subjects):
        if subject in assignment:
            shard, slice_index = assignment[subject]
            slices[shard][slice_index].append(row)
    return slices
