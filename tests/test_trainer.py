"""UnlearnTrainer internals: references without waste, the retain stream, loss-component logging."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from llm_unlearn.data.formatting import PaddingCollator, encode_qa
from llm_unlearn.methods import METHODS, register_method
from llm_unlearn.methods.grad_ascent import GradAscentConfig
from llm_unlearn.methods.logprobs import sequence_nll
from llm_unlearn.trainer import (
    RetainStream,
    UnlearnConfig,
    UnlearnTrainer,
    frozen_reference,
    retain_positions,
)


def tokenized(tokenizer, n: int, tag: str) -> Dataset:
    return Dataset.from_list(
        [encode_qa(tokenizer, f"Question {tag}{i}?", f"Answer {tag}{i}.") for i in range(n)]
    )


def make_trainer(model, tokenizer, tmp_path, **config) -> UnlearnTrainer:
    args = UnlearnConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2, max_steps=2,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", disable_tqdm=True, **config,
    )  # fmt: skip
    return UnlearnTrainer(
        model=model, args=args, train_dataset=tokenized(tokenizer, 4, "f"),
        retain_dataset=tokenized(tokenizer, 6, "r"), data_collator=PaddingCollator(tokenizer.pad_token_id),
    )  # fmt: skip


def test_retain_stream_is_a_fresh_permutation_each_pass_and_seeded():
    stream = RetainStream(5, seed=7)
    first, second = [stream[i] for i in range(5)], [stream[i] for i in range(5, 10)]
    assert sorted(first) == sorted(second) == list(range(5))
    assert [RetainStream(5, seed=7)[i] for i in range(10)] == first + second
    with pytest.raises(ValueError, match="retain set is empty"):
        RetainStream(0, seed=0)


def test_ranks_read_disjoint_slices_that_tile_the_one_process_batch():
    one = [list(retain_positions(step, 1, 0, 4)) for step in range(3)]
    two = [[*retain_positions(step, 2, 0, 2), *retain_positions(step, 2, 1, 2)] for step in range(3)]
    assert one == two == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert not set(retain_positions(5, 2, 0, 2)) & set(retain_positions(5, 2, 1, 2))


def test_lora_kl_reference_is_the_model_with_adapters_off(tiny_model, tiny_tokenizer, tmp_path):
    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = make_trainer(
        model, tiny_tokenizer, tmp_path, method="graddiff", method_args={"retain_loss": "kl"}
    )
    assert trainer._reference_model is None
    trainer.train()
    kl = [entry["retain_kl"] for entry in trainer.state.log_history if "retain_kl" in entry]
    # LoRA starts as the identity, so the first step's KL to the adapter-free model is exactly zero.
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[1] > 0


def test_full_parameter_kl_keeps_one_frozen_copy_and_no_copy_for_nll(tiny_model, tiny_tokenizer, tmp_path):
    assert make_trainer(tiny_model, tiny_tokenizer, tmp_path, method="graddiff")._reference_model is None
    trainer = make_trainer(
        tiny_model, tiny_tokenizer, tmp_path, method="graddiff", method_args={"retain_loss": "kl"}
    )
    reference = trainer._reference_model
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert (
        frozen_reference(get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"])), "cpu")
        is None
    )


def test_method_args_from_the_command_line_are_json(tmp_path):
    config = UnlearnConfig(output_dir=str(tmp_path), method="graddiff", method_args='{"alpha": 2.5}')
    assert config.method_args == {"alpha": 2.5}
    with pytest.raises(ValueError, match="method_args must be a JSON mapping"):
        UnlearnConfig(output_dir=str(tmp_path), method_args="{alpha: 2")


@pytest.fixture
def diverging_method():
    """A method whose loss turns NaN on its second call, registered only for the test that uses it."""
    calls = []

    def nan_at_step_2(step, config):
        calls.append(1)
        nll = sequence_nll(step.logits("forget"), step.labels("forget")).mean()
        return (-nll if len(calls) < 2 else nll * float("nan")), {"forget_nll": nll.item()}

    register_method("test_nan_at_step_2", GradAscentConfig)(nan_at_step_2)
    yield "test_nan_at_step_2"
    del METHODS["test_nan_at_step_2"]


def test_nonfinite_loss_stops_and_keeps_the_last_good_weights(
    tiny_model, tiny_tokenizer, tmp_path, diverging_method
):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path, method=diverging_method)
    trainer.args.max_steps = 5
    trainer.train()
    after_first = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    assert trainer.safeguard_stop["reason"].startswith("non-finite") and trainer.state.global_step <= 2
    assert all(torch.isfinite(v).all() for v in after_first.values())
    assert trainer.safeguard_report()["stopped"]["step"] == 1


def test_retain_loss_limit_stops_the_run(tiny_model, tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path, method="graddiff", retain_loss_limit=0.5)
    trainer.args.max_steps = 5
    trainer.train()
    assert "exceeded retain_loss_limit 0.5" in trainer.safeguard_stop["reason"]
    assert trainer.state.global_step == 1


def test_lora_adapters_get_gradients_under_reentrant_checkpointing(tiny_model_dir, tiny_tokenizer):
    """A known failure elsewhere (all-zero lora_B after training); transformers 5 makes the embedding output
    require grad when checkpointing is enabled, and this guards that path as Trainer uses it."""
    from llm_unlearn.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(
        tiny_model_dir, peft_config=LoraConfig(r=4, target_modules=["q_proj"])
    )
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)([encode_qa(tiny_tokenizer, "Q one?", "Answer one.")])
    model(**batch).loss.backward()
    lora_b = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)


@pytest.fixture
def nan_at_call():
    """Registers, for one test, a method (forget NLL ascent) whose loss turns NaN on call `nan_call`; returns its
    name and the list its calls are appended to."""
    names = []

    def register(nan_call: int) -> tuple[str, list[int]]:
        calls: list[int] = []

        def loss(step, config):
            calls.append(1)
            nll = sequence_nll(step.logits("forget"), step.labels("forget")).mean()
            return (-nll if len(calls) != nan_call else nll * float("nan")), {"forget_nll": nll.item()}

        name = f"test_nan_at_call_{nan_call}"
        register_method(name, GradAscentConfig)(loss)
        names.append(name)
        return name, calls

    yield register
    for name in names:
        del METHODS[name]


class WeightsAfterEachStep(TrainerCallback):
    """The model's weights after each optimizer step, by global step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.after[state.global_step] = {k: v.clone() for k, v in self.model.state_dict().items()}


@pytest.mark.parametrize(
    ("nan_call", "last_step"),
    [
        (3, 1),  # the first micro-step of step 2: stop at once, before any later micro-step or optimizer step
        (4, 2),  # its last micro-step: the optimizer step runs on dropped gradients, changing nothing
    ],
)
def test_a_nonfinite_micro_step_under_gradient_accumulation_applies_no_partial_update(
    tiny_model, tiny_tokenizer, tmp_path, nan_at_call, nan_call, last_step
):
    method, calls = nan_at_call(nan_call)
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path, method=method, gradient_accumulation_steps=2)
    trainer.args.max_steps = 5
    weights = WeightsAfterEachStep(tiny_model)
    trainer.add_callback(weights)
    trainer.train()
    assert len(calls) == nan_call  # no micro-step ran after the NaN one
    assert trainer.state.global_step == last_step
    assert trainer.safeguard_stop["reason"].startswith("non-finite")
    assert trainer.safeguard_report()["stopped"]["step"] == 1
    # The weights are those after step 1, the last good one.
    assert all(torch.equal(weights.after[1][k], v) for k, v in tiny_model.state_dict().items())


def test_the_gradient_check_catches_nan_and_inf_but_not_large_finite_gradients(
    tiny_model, tiny_tokenizer, tmp_path
):
    trainer = make_trainer(tiny_model, tiny_tokenizer, tmp_path, method="graddiff")
    params = list(trainer.model.parameters())
    loss = torch.tensor(1.0)
    assert trainer._gradients_finite(loss)  # no gradients at all
    for value, finite in ((0.0, True), (1e30, True), (float("nan"), False), (float("inf"), False)):
        for p in params:
            p.grad = torch.zeros_like(p)
        params[1].grad.view(-1)[0] = value  # 1e30: finite, though its square overflows float32
        assert trainer._gradients_finite(loss) is finite, value
    for p in params:
        p.grad = torch.zeros_like(p)
    assert not trainer._gradients_finite(torch.tensor(float("nan")))


def test_question_answer_rows_are_tokenized_with_the_methods_views(tiny_model, tiny_tokenizer, tmp_path):
    """Given rows (not tokens), the trainer tokenizes them as the recipe's data arguments render prompts, and the
    forget set with every view its method reads (DPO: the preferred answer)."""
    from llm_unlearn.data.formatting import tokenize_dataset, tokenize_views

    forget = Dataset.from_list([{"question": f"Who is f{i}?", "answer": f"F{i} is a writer."} for i in range(4)])
    retain = Dataset.from_list([{"question": f"Who is r{i}?", "answer": f"R{i} is a painter."} for i in range(6)])
    args = UnlearnConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2, max_steps=1,
        save_strategy="no", disable_tqdm=True, method="dpo",
    )  # fmt: skip
    prompt_format = {"template": "plain", "max_length": 32}
    trainer = UnlearnTrainer(
        model=tiny_model, args=args, train_dataset=forget, retain_dataset=retain, processing_class=tiny_tokenizer,
        prompt_format=prompt_format,
    )  # fmt: skip
    views = args.method_config.forget_views()
    assert set(views) == {"win"}
    expected, _ = tokenize_views(forget, tiny_tokenizer, views, **prompt_format)
    for column in expected.column_names:
        assert trainer.train_dataset[column] == expected[column], column
    assert trainer.retain_dataset[:] == tokenize_dataset(retain, tiny_tokenizer, **prompt_format)[0][:]
    with pytest.raises(ValueError, match="needs processing_class"):
        UnlearnTrainer(model=tiny_model, args=args, train_dataset=forget, retain_dataset=retain)
