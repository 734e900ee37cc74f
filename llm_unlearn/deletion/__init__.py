"""Deletion requests: the lineage and request ledger, the signed unlearning report a privacy officer reads, and
(`llm_unlearn.deletion.paths`) the two ways `llm-unlearn forget` carries a request out: an approximate recipe or
an exact SISA deletion."""

from llm_unlearn.deletion.ledger import (
    LEDGER_FILE,
    Ledger,
    LedgerError,
    LedgerFileError,
    Request,
    StepRecord,
    TrainingExample,
    request_id_for,
)
from llm_unlearn.deletion.report import (
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
    "LEDGER_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "Ledger",
    "LedgerError",
    "LedgerFileError",
    "ReportError",
    "Request",
    "StepRecord",
    "TrainingExample",
    "build_unlearning_report",
    "model_artifact",
    "request_id_for",
    "sign",
    "standard_statements",
    "verification_problem",
    "verify_report",
    "write_unlearning_report",
]
