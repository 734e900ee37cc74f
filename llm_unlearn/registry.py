"""A name -> item registry, the shape shared by unlearning methods, metrics and attacks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Items registered by name, read as a mapping in registration order; `kind` names what they are in messages
    ("metric" gives "unknown metric 'x'; known metrics: [...]").

    Unlike `dict.get`, `get(name)` raises for an unknown name, because a misspelt name in a config should stop the
    run with the list of known names rather than fall back to None.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Add `item` under `name` and return it; a name can be registered once."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered.")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:  # type: ignore[override]
        """The item registered under `name`, or ValueError listing the known names."""
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {self.names()}.")
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __delitem__(self, name: str) -> None:
        # Lets a test remove the item it registered for itself.
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
