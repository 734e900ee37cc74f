"""Evaluation: per-item passes (teacher forcing, answer groups against one cached prompt, generation, gradients),
metrics derived from them, membership inference, robustness attacks, reports and the CI gate."""

from llm_unlearn.evaluation.aggregate import summarize
from llm_unlearn.evaluation.evaluator import EvalConfig, SplitConfig, evaluate_split, evaluate_splits
from llm_unlearn.evaluation.generation import generate_greedy, generate_samples, greedy_generation_config
from llm_unlearn.evaluation.metrics import (
    METRICS,
    Metric,
    get_metric,
    probability,
    register_metric,
    rouge_l_f1,
    rouge_l_recall,
)
from llm_unlearn.evaluation.results import EvalFileError, EvalResult, Measurement, load_eval, save_eval
from llm_unlearn.evaluation.statistics import (
    AnswerGroup,
    ItemStatistics,
    compute_item_statistics,
    score_answer_groups,
)

__all__ = [
    "METRICS",
    "AnswerGroup",
    "EvalConfig",
    "EvalFileError",
    "EvalResult",
    "ItemStatistics",
    "Measurement",
    "Metric",
    "SplitConfig",
    "compute_item_statistics",
    "evaluate_split",
    "evaluate_splits",
    "generate_greedy",
    "generate_samples",
    "get_metric",
    "greedy_generation_config",
    "load_eval",
    "probability",
    "register_metric",
    "rouge_l_f1",
    "rouge_l_recall",
    "save_eval",
    "score_answer_groups",
    "summarize",
]
