"""Deletion requests: the signed unlearning report a privacy officer reads."""

from llm_unlearn.requests.report import (
    APPROXIMATE_GUARANTEE,
    APPROXIMATE_LIMITATIONS,
    DEFAULT_TARGET,
    DEFAULT_TARGET_S,
    EXACT_GUARANTEE,
    EXACT_LIMITATIONS,
    REPORT_JSON,
    REPORT_MD,
    ReportError,
    build_unlearning_report,
    model_artifact,
    sign,
    standard_statements,
    verification_problem,
    verify_report,
    write_unlearning_report,
)

__all__ = [
    "APPROXIMATE_GUARANTEE",
    "APPROXIMATE_LIMITATIONS",
    "DEFAULT_TARGET",
    "DEFAULT_TARGET_S",
    "EXACT_GUARANTEE",
    "EXACT_LIMITATIONS",
    "REPORT_JSON",
    "REPORT_MD",
    "ReportError",
    "build_unlearning_report",
    "model_artifact",
    "sign",
    "standard_statements",
    "verification_problem",
    "verify_report",
    "write_unlearning_report",
]
