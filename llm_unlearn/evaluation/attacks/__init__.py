"""Robustness attacks (docs/attacks.md), each a named option of the eval suite: does the forgotten
knowledge come back under weight quantization, brief relearning, paraphrased questions or sampling?

One module per attack; importing this package registers them all in `ATTACKS`. Run one with
`run_attack(name, context, **overrides)`.
"""

# Importing the attack modules registers their attacks.
from llm_unlearn.evaluation.attacks import leak, paraphrase, quantization, relearning  # noqa: F401
from llm_unlearn.evaluation.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    attack_params,
    get_attack,
    register_attack,
    run_attack,
)
from llm_unlearn.evaluation.attacks.quantization import quantize_rtn

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "attack_params",
    "get_attack",
    "quantize_rtn",
    "register_attack",
    "run_attack",
]
