"""Data: example schemas, loaders, forget/retain selection and the built-in fictional dataset."""

from llm_unlearn.data.fictional import FICTIONAL_SPLITS, make_fictional_dataset
from llm_unlearn.data.loading import example_fingerprint, fingerprint, load_records
from llm_unlearn.data.schema import DataError, validate_dataset
from llm_unlearn.data.selection import UnlearnSplit, select_forget_retain, subject_ids

__all__ = [
    "FICTIONAL_SPLITS",
    "DataError",
    "UnlearnSplit",
    "example_fingerprint",
    "fingerprint",
    "load_records",
    "make_fictional_dataset",
    "select_forget_retain",
    "subject_ids",
    "validate_dataset",
]
