"""SISA, exact unlearning with sharded LoRA adapters (Bourtoule et al. 2021, arXiv 1912.03817): `train.train` puts
each training subject into one of k shards and one of r slices and trains one LoRA adapter per shard, slice by
slice, with a checkpoint after each; `delete.delete` removes subjects by retraining only their shards from the
checkpoint before their slice; `load_ensemble` serves the shards as one causal LM that averages their next-token
probabilities (`llm_unlearn.models.load_model_and_tokenizer` loads a SISA directory that way).

The modules: `plan` (the shard plan), `record` (the SISA directory and sisa.json), `ensemble` (the served
model), `train` and `delete` (the algorithm). This package exports what serving needs; the algorithm, which loads
models through `llm_unlearn.models`, is imported from its modules, so that the loader can import this package.
"""

from llm_unlearn.sisa.ensemble import (
    ShardAdapter,
    ShardEnsembleCache,
    ShardEnsembleForCausalLM,
    causal_lm_loss,
    load_ensemble,
    shard_adapter_from_peft,
)
from llm_unlearn.sisa.plan import plan_shards
from llm_unlearn.sisa.record import (
    SISA_FILE,
    SISA_FORMAT,
    adapter_sha256,
    base_model_kwargs,
    checkpoint_name,
    ensemble_sha256,
    is_sisa_dir,
    read_sisa_record,
    served_checkpoints,
    shard_dir,
)

__all__ = [
    "SISA_FILE",
    "SISA_FORMAT",
    "ShardAdapter",
    "ShardEnsembleCache",
    "ShardEnsembleForCausalLM",
    "adapter_sha256",
    "base_model_kwargs",
    "causal_lm_loss",
    "checkpoint_name",
    "ensemble_sha256",
    "is_sisa_dir",
    "load_ensemble",
    "plan_shards",
    "read_sisa_record",
    "served_checkpoints",
    "shard_adapter_from_peft",
    "shard_dir",
]
