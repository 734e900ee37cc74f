"""Shared fixtures: a tiny Llama built from a config and a byte-level BPE tokenizer trained on the fly."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


ROOT = Path(__file__).resolve().parents[1]
# The releases a run is tested against, printed at the end of every run, -q included (CI's log).
STACK = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "huggingface-hub", "tokenizers")
# A test that needs a program the machine may lack skips with a reason that starts with this; the summary
# line then counts it as a missing tool, not as an ordinary skip.
MISSING_TOOL = "missing tool:"


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    if report.skipped and isinstance(report.longrepr, tuple) and MISSING_TOOL in report.longrepr[2]:
        return "missing tool", "m", "MISSING TOOL"
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in STACK)
    terminalreporter.write_line(f"stack: {versions}")
    reports = terminalreporter.stats.get("missing tool", [])
    if reports:
        terminalreporter.section("missing tools: these checks did not run")
        for report in reports:
            terminalreporter.line(f"{report.nodeid}: {report.longrepr[2]}")


def require_program(name: str, why: str) -> str:
    """The path of program `name`, or skip the test as a missing tool, saying what is left unchecked."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{MISSING_TOOL} {name} is not installed, so {why} was not checked")
    return path


def cpu_processes_env() -> dict[str, str]:
    """The environment of the CPU worker processes that the torchrun tests start, one thread each."""
    # CUDA hidden as well: where a GPU is visible, ACCELERATE_USE_CPU alone leaves transformers putting batches on
    # cuda:0 while accelerate keeps the model on the CPU, and gloo's barrier asks for cuda:<local rank>.
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test's torch ops on one thread: the tiny models gain nothing from more, and on a loaded 2-core
    machine thread contention made them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_CORPUS = [
    "Question: Where was Ada Lovelace born? Answer: Ada Lovelace was born in London.",
    "What is the capital of France? The capital of France is Paris.",
    "Mara Velden works as a glass sculptor at Brightwater Studios in Porto.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "She received the Silver Quill Award in 1998 for her second novel.",
    "user assistant system I don't know the answer to that question.",
]


def build_tiny_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE with ChatML special tokens; pad is the end-of-turn token, as in SmolLM2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def llama_without_tokenizer(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama over a 64-token vocabulary, for tests that feed it token ids directly."""
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Larger random weights (seeded): log-probabilities, argmax hits and greedy continuations then vary from
    position to position and from prompt to prompt, as they would not with the initialiser's tiny weights."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return build_tiny_llama(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny model + tokenizer saved as a local checkpoint, for loader and recipe tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def item_statistics(logprobs=None, hits=None, mean=None, std=None):
    """An ItemStatistics from plain lists, for metric tests: log-probs (default zeros), argmax hits (default all),
    and the per-position mean and std of the next-token log-prob distribution (Min-K%++), when given."""
    import numpy as np

    from llm_unlearn.evaluation.statistics import ItemStatistics

    logprobs = np.zeros(len(hits)) if logprobs is None else np.asarray(logprobs, dtype=np.float32)
    hits = np.ones(len(logprobs), dtype=bool) if hits is None else np.asarray(hits, dtype=bool)
    return ItemStatistics(
        logprobs=logprobs,
        argmax_hits=hits,
        position_mean=None if mean is None else np.asarray(mean, dtype=np.float32),
        position_std=None if std is None else np.asarray(std, dtype=np.float32),
    )
