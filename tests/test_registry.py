"""The name -> item registry shared by methods, metrics and attacks."""

from __future__ import annotations

import pytest

from llm_unlearn.evaluation.attacks import ATTACKS
from llm_unlearn.evaluation.metrics import METRICS
from llm_unlearn.methods import METHODS
from llm_unlearn.registry import Registry


def test_registry_reads_as_a_mapping_in_registration_order():
    registry = Registry[int]("widget")
    assert registry.register("b", 2) == 2
    registry.register("a", 1)
    assert list(registry) == ["b", "a"] and registry.names() == ["a", "b"]
    assert "a" in registry and "c" not in registry and len(registry) == 2
    assert registry["a"] == 1 and registry.get("b") == 2 and dict(registry.items()) == {"a": 1, "b": 2}
    del registry["a"]
    assert list(registry) == ["b"]


def test_duplicate_names_are_refused():
    registry = Registry[int]("widget")
    registry.register("a", 1)
    with pytest.raises(ValueError, match=r"^widget 'a' is already registered\.$"):
        registry.register("a", 2)
    assert registry["a"] == 1


def test_unknown_name_error_lists_the_known_names():
    registry = Registry[int]("widget")
    registry.register("b", 2)
    registry.register("a", 1)
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; known widgets: \['a', 'b'\]\.$"):
        registry.get("c")
    with pytest.raises(KeyError):
        registry["c"]


def test_methods_metrics_and_attacks_are_registries():
    for registry, kind in ((METHODS, "unlearning method"), (METRICS, "metric"), (ATTACKS, "attack")):
        assert isinstance(registry, Registry) and registry.kind == kind
        with pytest.raises(ValueError, match=rf"unknown {kind} 'nope'; known {kind}s: \["):
            registry.get("nope")
