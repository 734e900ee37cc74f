"""RMU: loss values against hidden states computed independently, the truncated forward, parameter selection,
decoder-layer discovery across model families, and short training runs in full and LoRA mode."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, cpu_processes_env
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from llm_unlearn.data.formatting import PaddingCollator, encode_qa
from llm_unlearn.methods import UnlearnStep, get_method
from llm_unlearn.methods import rmu as rmu_module
from llm_unlearn.methods.layers import capture_layer_output, decoder_layers
from llm_unlearn.methods.rmu import RMUConfig, random_direction, rmu_loss
from llm_unlearn.trainer import UnlearnConfig, UnlearnTrainer

ROOT = Path(__file__).resolve().parents[1]
FORGET = [("Where was Mara Velden born?", "Mara Velden was born in Porto."), ("What is 2+2?", "4")]
RETAIN = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Who wrote it?", "She did."),
]

_SMALL = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_SMALL, num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_SMALL, num_attention_heads=4, num_key_value_heads=2)),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    ),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**_SMALL, num_attention_heads=4)),
    "phi": lambda: PhiForCausalLM(PhiConfig(**_SMALL, num_attention_heads=4)),
    "gemma": lambda: GemmaForCausalLM(
        GemmaConfig(**_SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    ),
}


def make_batch(tokenizer, pairs):
    return PaddingCollator(tokenizer.pad_token_id)([encode_qa(tokenizer, q, a) for q, a in pairs])


def make_step(model, reference, forget, retain) -> UnlearnStep:
    @contextlib.contextmanager
    def reference_context():
        with torch.no_grad():
            yield reference

    return UnlearnStep(model, {"forget": forget, "retain": retain}, reference=reference_context)


def hand_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over sequences of the mean over attended tokens of the mean squared error over hidden dims."""
    per_sequence = []
    for row in range(hidden.shape[0]):
        errors = [
            ((hidden[row, t].double() - target[row, t].double()) ** 2).mean().item()
            for t in range(hidden.shape[1])
            if mask[row, t] == 1
        ]
        per_sequence.append(sum(errors) / len(errors))
    return sum(per_sequence) / len(per_sequence)


def hidden_after(model, batch, layer: int) -> torch.Tensor:
    """Output of decoder layer `layer` from transformers' own `output_hidden_states` (entry 0 is the embeddings)."""
    with torch.no_grad():
        outputs = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    return outputs.hidden_states[layer + 1]


def test_random_direction_is_seeded_and_unit_norm():
    u = random_direction(64, seed=3)
    assert torch.equal(u, random_direction(64, seed=3))
    assert not torch.equal(u, random_direction(64, seed=4))
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert (u >= 0).all()


def test_loss_matches_an_independent_hidden_states_computation(tiny_model, tiny_tokenizer, monkeypatch):

    reference = build_tiny_llama(tiny_tokenizer, seed=1)
    u = torch.linspace(1.0, 2.0, 32)
    u = u / u.norm()
    monkeypatch.setattr(rmu_module, "random_direction", lambda size, seed: u)
    config = RMUConfig(layer=0, steering_coeff=4.0, alpha=3.0)
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    assert (forget["attention_mask"] == 0).any(), "the check needs padding in the batch"

    loss, logs = rmu_loss(make_step(tiny_model, reference, forget, retain), config)

    h_forget = hidden_after(tiny_model, forget, 0)
    expected_forget = hand_mse(h_forget, (4.0 * u).expand_as(h_forget), forget["attention_mask"])
    expected_retain = hand_mse(
        hidden_after(tiny_model, retain, 0), hidden_after(reference, retain, 0), retain["attention_mask"]
    )
    assert logs["forget_mse"] == pytest.approx(expected_forget, rel=1e-5)
    assert logs["retain_mse"] == pytest.approx(expected_retain, rel=1e-5)
    assert loss.item() == pytest.approx(expected_forget + 3.0 * expected_retain, rel=1e-5)
    assert loss.requires_grad


def test_loss_is_zero_at_the_target_and_retain_term_zero_against_itself(
    tiny_model, tiny_tokenizer, monkeypatch
):
    # One attended token: its activation h defines the target, u = h / |h| and c = |h|.
    forget = {"input_ids": torch.tensor([[5, 9]]), "attention_mask": torch.tensor([[0, 1]])}
    h = hidden_after(tiny_model, forget, 0)[0, 1]
    monkeypatch.setattr(rmu_module, "random_direction", lambda size, seed: h / h.norm())
    retain = make_batch(tiny_tokenizer, RETAIN)
    config = RMUConfig(layer=0, steering_coeff=h.norm().item())
    loss, logs = rmu_loss(make_step(tiny_model, tiny_model, forget, retain), config)
    assert logs["retain_mse"] == 0.0
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_forward_stops_after_the_hooked_layer_runs_once_per_split_and_removes_its_hook(
    tiny_model, tiny_tokenizer
):

    reference = build_tiny_llama(tiny_tokenizer, seed=1)
    calls: dict[str, int] = {}

    def count(name):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1

        return hook

    for model, tag in ((tiny_model, "model"), (reference, "reference")):
        for name in ("model.layers.0", "model.layers.1", "model.norm", "lm_head"):
            model.get_submodule(name).register_forward_pre_hook(count(f"{tag}:{name}"))
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    step = make_step(tiny_model, reference, forget, retain)
    rmu_loss(step, RMUConfig(layer=0))
    step.activations("forget", "model.layers.0")
    step.reference_activations("retain", "model.layers.0")
    # Forget and retain through the trained model, retain through the reference; nothing after layer 0.
    assert calls == {"model:model.layers.0": 2, "reference:model.layers.0": 1}
    for model in (tiny_model, reference):
        assert not model.get_submodule("model.layers.0")._forward_hooks


def test_the_hook_is_removed_when_the_forward_fails(tiny_model):
    bad = {"input_ids": torch.tensor([[10**6]]), "attention_mask": torch.tensor([[1]])}
    with pytest.raises(IndexError):
        capture_layer_output(tiny_model, "model.layers.1", bad)
    assert not tiny_model.model.layers[1]._forward_hooks


def test_configure_model_trains_only_the_selected_parameters(tiny_model, tiny_tokenizer):

    config = RMUConfig(layer=1)
    config.configure_model(tiny_model)
    trainable = {name for name, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    reference = build_tiny_llama(tiny_tokenizer, seed=1)
    forget, retain = make_batch(tiny_tokenizer, FORGET), make_batch(tiny_tokenizer, RETAIN)
    loss, _ = rmu_loss(make_step(tiny_model, reference, forget, retain), config)
    loss.backward()
    with_grad = {name for name, p in tiny_model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert all(p.grad.abs().sum() > 0 for p in tiny_model.parameters() if p.grad is not None)


def test_configure_model_in_lora_mode_selects_among_adapter_weights(tiny_model):
    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    RMUConfig(layer=0).configure_model(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "base_model.model.model.layers.0.mlp.down_proj.lora_A.default.weight",
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight",
    }


def test_configure_model_errors_name_the_regex_and_the_layer_range(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"regex 'no_such_weight' matches none of the \d+ .*embed_tokens"):
        RMUConfig(layer=1, trainable_params="no_such_weight").configure_model(tiny_model)
    # Adapters only on attention: the default regex finds no adapter weight to train.
    lora = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"down_proj.*matches none.*lora_A"):
        RMUConfig(layer=1).configure_model(lora)

    model = build_tiny_llama(tiny_tokenizer)
    with pytest.raises(ValueError, match=r"layer=2 is out of range: .* 2 decoder layers \(0\.\.1\)"):
        RMUConfig(layer=2).configure_model(model)
    with pytest.raises(ValueError, match="out of range"):
        RMUConfig(layer=-1).configure_model(model)
    with pytest.raises(ValueError, match="is not a regex"):
        get_method("rmu").make_config({"trainable_params": "(unclosed"})
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_layers_and_default_regex_across_families(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    path, layers = decoder_layers(model)
    assert len(layers) == 2 and all(type(block) is type(layers[0]) for block in layers)
    batch = {"input_ids": torch.tensor([[3, 7, 11, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        captured = capture_layer_output(model, f"{path}.0", batch)
    torch.testing.assert_close(captured, hidden_after(model, batch, 0))

    RMUConfig(layer=1).configure_model(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(
        re.search(r"\.[01]\.mlp\.(down_proj|c_proj|dense_4h_to_h|fc2)\.", n) for n in trainable
    )


def test_decoder_layers_through_a_peft_wrapper_and_a_clear_error(tiny_model):
    wrapped = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["down_proj"]))
    path, layers = decoder_layers(wrapped)
    assert path == "base_model.model.model.layers" and layers is tiny_model.model.layers
    with pytest.raises(ValueError, match="cannot find the decoder layers of Linear"):
        decoder_layers(torch.nn.Linear(2, 2))
    tiny_model.config.num_hidden_layers = 5
    with pytest.raises(ValueError, match="no ModuleList has num_hidden_layers=5"):
        decoder_layers(tiny_model)


def tokenized(tokenizer, n: int, tag: str) -> Dataset:
    return Dataset.from_list(
        [encode_qa(tokenizer, f"Question {tag}{i}?", f"Answer {tag}{i}.") for i in range(n)]
    )


def run_rmu(model, tokenizer, tmp_path) -> UnlearnTrainer:
    args = UnlearnConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2, max_steps=6,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", disable_tqdm=True, method="rmu",
        method_args={"layer": 1, "steering_coeff": 6.5, "alpha": 10.0},
    )  # fmt: skip
    trainer = UnlearnTrainer(
        model=model, args=args, train_dataset=tokenized(tokenizer, 4, "f"),
        retain_dataset=tokenized(tokenizer, 6, "r"), data_collator=PaddingCollator(tokenizer.pad_token_id),
    )  # fmt: skip
    trainer.train()
    return trainer


def forget_mse(trainer: UnlearnTrainer) -> list[float]:
    return [entry["forget_mse"] for entry in trainer.state.log_history if "forget_mse" in entry]


def test_full_mode_run_lowers_forget_mse_and_changes_only_selected_weights(
    tiny_model, tiny_tokenizer, tmp_path
):
    # Trainer moves the model to the GPU where there is one: compare on the CPU.
    before = {k: v.cpu().clone() for k, v in tiny_model.state_dict().items()}
    trainer = run_rmu(tiny_model, tiny_tokenizer, tmp_path)
    mse = forget_mse(trainer)
    assert len(mse) == 6 and mse[-1] < mse[0]
    changed = {k for k, v in tiny_model.state_dict().items() if not torch.equal(before[k], v.cpu())}
    assert changed == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}


def test_lora_mode_run_lowers_forget_mse_and_trains_only_down_proj_adapters(
    tiny_model, tiny_tokenizer, tmp_path
):
    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    before = {k: v.cpu().clone() for k, v in model.state_dict().items()}
    trainer = run_rmu(model, tiny_tokenizer, tmp_path)
    assert trainer._reference_model is None
    mse = forget_mse(trainer)
    assert len(mse) == 6 and mse[-1] < mse[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v.cpu())}
    assert changed and all(re.search(r"layers\.[01]\.mlp\.down_proj\.lora_[AB]\.", k) for k in changed)


@pytest.mark.distributed
def test_two_processes_match_one_process_although_the_forward_stops_early(tiny_model_dir, tmp_path):
    """DDP arms its gradient all-reduce at the end of its forward: the early stop must still let it sync."""
    rows = [
        {"question": f"What is fact {k} about {s}?", "answer": f"{s} has fact {k * 7 + i}.", "subject_id": s}
        for i, s in enumerate(["s-a", "s-b", "s-c", "s-d"])
        for k in range(4)
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = cpu_processes_env()
    script = str(ROOT / "recipes" / "unlearn.py")

    def args(out: Path, batch_size: int) -> list[str]:
        return [
            "--model_name_or_path", tiny_model_dir, "--dataset", str(data), "--forget_subjects", "s-a",
            "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no", "--seed", "3",
            "--disable_tqdm", "true", "--method", "rmu", "--method_args", '{"layer": 1, "alpha": 10}',
            "--learning_rate", "5", "--optim", "sgd", "--max_steps", "3", "--lr_scheduler_type", "constant",
            "--per_device_train_batch_size", str(batch_size),
        ]  # fmt: skip

    subprocess.run([sys.executable, script, *args(tmp_path / "one", 4)], check=True, env=env, cwd=tmp_path)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541", script,
         *args(tmp_path / "two", 2)],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    one, two = (
        load_file(tmp_path / "one" / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    assert {k for k in one if not torch.equal(start[k], one[k])} == {
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    }
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=1e-5, msg=key)
