"""Publish a run directory on the Hugging Face Hub: a model card (YAML metadata with base_model, library_name,
tags, datasets and the eval results as a model-index; prose on the method, the data removed and the limits) and
`push_run`, which uploads the adapter or the merged model, the card and the reports in one commit.

What is published leaves out what must not leave the machine: eval.json keeps its per-item numbers but not the
items' text (questions, answers and generations are the users' training data), run.json and eval.json name local
files by their last path component only, and report.md / report.html are rebuilt from those copies.

run_directory reads a run as the card and the push see it, model_card builds the card, push stages and uploads.
"""

from llm_unlearn.hub.model_card import (
    EMBEDDED_LICENSE,
    METRIC_DESCRIPTIONS,
    REMOVED_SETS,
    TASK_TYPE,
    build_model_card,
    card_eval_results,
)
from llm_unlearn.hub.push import (
    ITEM_KEYS_KEPT,
    MODEL_FILE_PATTERNS,
    PUBLISHED_FILES,
    public_eval,
    push_run,
    stage_run,
)
from llm_unlearn.hub.run_directory import (
    EMBEDDED_HUB_ID,
    LOCAL_PATH_PREFIX,
    UNLEARNING_REPORT_FILES,
    PushError,
    RunDirectory,
    adapter_base,
    is_hub_id,
    read_run_directory,
    upstream_hub_model,
)

__all__ = [
    "EMBEDDED_HUB_ID",
    "EMBEDDED_LICENSE",
    "ITEM_KEYS_KEPT",
    "LOCAL_PATH_PREFIX",
    "METRIC_DESCRIPTIONS",
    "MODEL_FILE_PATTERNS",
    "PUBLISHED_FILES",
    "REMOVED_SETS",
    "TASK_TYPE",
    "UNLEARNING_REPORT_FILES",
    "PushError",
    "RunDirectory",
    "adapter_base",
    "build_model_card",
    "card_eval_results",
    "is_hub_id",
    "public_eval",
    "push_run",
    "read_run_directory",
    "stage_run",
    "upstream_hub_model",
]
