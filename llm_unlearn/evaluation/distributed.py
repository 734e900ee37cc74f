"""Split per-item evaluation work across the processes of `accelerate launch` / `torchrun` and gather it back in
input order, so that N processes give the numbers of one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch.distributed as dist

Item = TypeVar("Item")
Result = TypeVar("Result")


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and without a process group): the process that writes files."""
    return world()[0] == 0


def map_items(fn: Callable[[Sequence[Item]], list[Result]], items: Sequence[Item]) -> list[Result]:
    """`fn(items)` computed across processes: rank r runs `fn` on items r, r + N, r + 2N, ... and every rank
    gets all results back in input order. `fn` must map each item independently of the others."""
    rank, size = world()
    if size == 1:
        return fn(items)
    # Striding rather than contiguous chunks: items of similar length often sit together in a dataset, and
    # striding gives each rank a similar share of long ones.
    local = fn(items[rank::size])
    if len(local) != len(items[rank::size]):
        raise RuntimeError(f"map_items: fn returned {len(local)} results for {len(items[rank::size])} items.")
    gathered: list[list[Result] | None] = [None] * size
    dist.all_gather_object(gathered, local)
    results: list[Result] = [None] * len(items)  # type: ignore[list-item]
    for source, part in enumerate(gathered):
        results[source::size] = part
    return results
