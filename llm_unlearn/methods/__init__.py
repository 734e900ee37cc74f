"""Unlearning methods, one module each, registered by name in `METHODS`."""

from llm_unlearn.methods import (
    ce_u,
    dpo,
    grad_ascent,
    grad_diff,
    npo,
    retain_finetune,
    rmu,
    satimp,
    simnpo,
    undial,
    wga,
)
from llm_unlearn.methods.base import (
    METHODS,
    MethodConfig,
    MethodField,
    UnlearnMethod,
    UnlearnStep,
    describe_method,
    get_method,
    register_method,
)
from llm_unlearn.methods.retain import RETAIN_LOSSES

__all__ = [
    "METHODS",
    "RETAIN_LOSSES",
    "MethodConfig",
    "MethodField",
    "UnlearnMethod",
    "UnlearnStep",
    "ce_u",
    "describe_method",
    "dpo",
    "get_method",
    "grad_ascent",
    "grad_diff",
    "npo",
    "register_method",
    "retain_finetune",
    "rmu",
    "satimp",
    "simnpo",
    "undial",
    "wga",
]
