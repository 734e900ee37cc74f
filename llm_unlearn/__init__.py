"""llm_unlearn: remove the influence of chosen training data from causal language models."""

__version__ = "0.1.0"
