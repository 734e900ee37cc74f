"""Evaluation: one teacher-forced pass per item, batched greedy generation, and metrics derived from them."""

from llm_unlearn.evaluation.aggregate import summarize
from llm_unlearn.evaluation.evaluator import EvalConfig, evaluate_splits, load_eval, save_eval
from llm_unlearn.evaluation.generation import generate_greedy, greedy_generation_config
from llm_unlearn.evaluation.metrics import (
    METRICS,
    Metric,
    get_metric,
    probability,
    register_metric,
    rouge_l_f1,
    rouge_l_recall,
)
from llm_unlearn.evaluation.statistics import ItemStatistics, compute_item_statistics

__all__ = [
    "METRICS",
    "EvalConfig",
    "ItemStatistics",
    "Metric",
    "compute_item_statistics",
    "evaluate_splits",
    "generate_greedy",
    "get_metric",
    "greedy_generation_config",
    "load_eval",
    "probability",
    "register_metric",
    "rouge_l_f1",
    "rouge_l_recall",
    "save_eval",
    "summarize",
]
