"""Models and the Hub that cannot be used as given: a Hub id with the Hub unreachable or HF_HUB_OFFLINE set, a
model that needs its own code, LoRA on an architecture PEFT does not know, damaged weights, and a push that cannot
reach the Hub or is refused. Each ends in one message that names what is wrong and what to do, exit code 2 from
the command line, and no traceback; none waits on the network (the Hub is a closed local port or a local stub)."""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from llm_unlearn import cli
from llm_unlearn.models import ModelLoadError, load_model_and_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SUITE = str(ROOT / "eval" / "builtin.yaml")
# Nothing listens on the discard port: a connection is refused at once.
CLOSED_ENDPOINT = "http://127.0.0.1:9"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# huggingface_hub's own retries take over a minute; a single refused look-up takes milliseconds.
NO_RETRIES_S = 20


def refused() -> str:
    """How this system words a refused connection to CLOSED_ENDPOINT ("[Errno 111] Connection refused" on Linux),
    which httpx passes on."""
    try:
        socket.create_connection(("127.0.0.1", 9)).close()
    except ConnectionRefusedError as error:
        return str(error)
    raise AssertionError(f"something listens at {CLOSED_ENDPOINT}; these tests need it closed")


class CustomConfig(LlamaConfig):
    """A model type PEFT has no default LoRA layers for, as a model shipping its own code has."""

    model_type = "llm-unlearn-test-custom"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `llm-unlearn ARGV`, check that it ends as bad input without a traceback, and return its message."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    prefix = f"llm-unlearn {argv[0]}: error: "
    (line,) = [line for line in err.splitlines() if line.startswith(prefix)]
    return line.removeprefix(prefix)


def evaluate(model: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "--config", SUITE, "--model_name_or_path", model, "--output_dir", str(tmp_path / "out"), *extra]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An unreachable Hub (a closed local port) and an empty Hub cache, online mode; returns the cache."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads these when imported; its functions and transformers' look them up when called. The
    # download address is built from the endpoint at import: patched too, so no download can reach the real Hub.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", CLOSED_ENDPOINT)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        CLOSED_ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_model(cache: Path, repo_id: str, model_dir: str) -> None:
    """Store `model_dir` in the Hub cache as `repo_id` at COMMIT, the branch main naming it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_a_hub_id_with_the_hub_unreachable_fails_at_once_saying_what_to_do(hub, tmp_path, capsys):
    start = time.monotonic()
    message = run_cli(evaluate("acme/not-cached", tmp_path), capsys)
    assert time.monotonic() - start < NO_RETRIES_S
    assert message == (
        "model 'acme/not-cached' is not the alias 'embedded', not a local directory or .gguf file, and as a Hub id "
        f"it could not be loaded: the Hub at {CLOSED_ENDPOINT} could not be reached (ConnectError: {refused()}), "
        f"and the model is not in the local Hub cache ({hub}). Check the network connection "
        "or HF_ENDPOINT; or download it first where the Hub is reachable (`hf download acme/not-cached`) and set "
        "HF_HUB_OFFLINE=1 to use only cached models; or give a local model directory or 'embedded'."
    )


def test_a_cached_hub_id_with_the_hub_unreachable_loads_from_the_cache(hub, tiny_model_dir, caplog):
    cache_model(hub, "acme/tiny", tiny_model_dir)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="llm_unlearn.models"):
        model, _ = load_model_and_tokenizer("acme/tiny")
    assert time.monotonic() - start < NO_RETRIES_S
    assert model.name_or_path == "acme/tiny"
    # The only warning: none of huggingface_hub's retries of a download.
    assert caplog.messages == [
        f"The Hub at {CLOSED_ENDPOINT} could not be reached (ConnectError: {refused()}); loading acme/tiny from "
        "the local Hub cache."
    ]


def test_a_hub_id_not_cached_under_hf_hub_offline_fails_without_asking_the_hub(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = run_cli(evaluate("acme/not-cached", tmp_path, "--model_revision", "v1"), capsys)
    assert message == (
        "model 'acme/not-cached' is not the alias 'embedded', not a local directory or .gguf file, and as a Hub id "
        f"it is not in the local Hub cache ({hub}) at revision 'v1', and HF_HUB_OFFLINE is set, so the Hub is not "
        "asked for it: download it first where the Hub is reachable (`hf download acme/not-cached --revision v1`), "
        "unset HF_HUB_OFFLINE, or give a local model directory or 'embedded'."
    )


def test_a_model_with_its_own_code_names_the_option_that_allows_it(tmp_path, capsys):
    model = tmp_path / "custom-code"
    model.mkdir()
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (model / "config.json").write_text(json.dumps({"model_type": "x-remote", "auto_map": auto_map}))
    message = run_cli(evaluate(str(model), tmp_path), capsys)
    assert message == (
        f"model {str(model)!r} (model type 'x-remote') needs the Python code it ships (auto_map in its config.json), "
        "which runs only when allowed: pass --trust_remote_code true (in a YAML config: trust_remote_code: true), "
        "and only if you trust that source, as its code then runs on this machine with your permissions."
    )


@pytest.fixture
def custom_model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny model of a type registered here, so that it loads but PEFT has no default LoRA layers for it."""
    AutoConfig.register(CustomConfig.model_type, CustomConfig, exist_ok=True)
    AutoModelForCausalLM.register(CustomConfig, CustomForCausalLM, exist_ok=True)
    config = CustomConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    path = tmp_path / "custom"
    CustomForCausalLM(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_lora_on_an_architecture_peft_does_not_know_asks_for_target_modules(custom_model_dir, tmp_path, capsys):
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(
        f"model_name_or_path: {custom_model_dir}\ndataset: builtin\ndataset_config: num_people=2,num_holdout=1\n"
        f"forget_subjects: [person-0000]\nuse_peft: true\nreport_to: none\noutput_dir: {tmp_path / 'out'}\n"
    )
    message = run_cli(["finetune", "--config", str(recipe)], capsys)
    assert message == (
        f"--use_peft: PEFT does not know which layers of model {str(custom_model_dir)!r} (model type "
        "'llm-unlearn-test-custom') to put LoRA adapters on; name them with --lora_target_modules (YAML: "
        "lora_target_modules), e.g. `--lora_target_modules down_proj gate_proj`, or `--lora_target_modules "
        "all-linear` for every linear layer but the output layer. Its linear layers: down_proj, gate_proj, k_proj, "
        "o_proj, q_proj, up_proj, v_proj."
    )
    assert not (tmp_path / "out").exists()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_model_weights_are_named(tmp_path, capsys):
    model = tmp_path / "cut"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2)
    ).save_pretrained(model)  # fmt: skip
    truncate(model / "model.safetensors")
    message = run_cli(evaluate(str(model), tmp_path), capsys)
    assert message == (
        f"the weights file {str(model / 'model.safetensors')!r} cannot be read: damaged or incomplete (safetensors: "
        "Error while deserializing header: incomplete metadata, file not fully covered), as an interrupted download "
        "or save leaves it; download the model again, or save it again."
    )


def test_truncated_adapter_weights_are_named(tiny_model_dir, tmp_path):
    model, _ = load_model_and_tokenizer(tiny_model_dir)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    truncate(adapter / "adapter_model.safetensors")
    with pytest.raises(ModelLoadError) as raised:
        load_model_and_tokenizer(str(adapter))
    assert str(raised.value) == (
        f"the weights file {str(adapter / 'adapter_model.safetensors')!r} cannot be read: damaged or incomplete "
        "(safetensors: Error while deserializing header: incomplete metadata, file not fully covered), as an "
        "interrupted download or save leaves it; download the model again, or save it again."
    )


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir) -> Path:
    """A finished full-model run, as push reads it."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run)
    (run / "run.json").write_text(json.dumps({"recipe": "finetune", "model": "embedded"}) + "\n")
    return run


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_push_with_the_hub_unreachable_names_the_repository_and_the_endpoint(hub, run_dir, capsys):
    before = files_of(run_dir)
    start = time.monotonic()
    message = run_cli(["push", str(run_dir), "--repo_id", "acme/unlearned"], capsys)
    assert time.monotonic() - start < NO_RETRIES_S
    assert message == (
        f"could not push to acme/unlearned: the Hub at {CLOSED_ENDPOINT} could not be reached (ConnectError: "
        f"{refused()}); no commit was made and the run directory {str(run_dir)!r} is unchanged. "
        "Check the network connection or HF_ENDPOINT, then run the push again."
    )
    assert files_of(run_dir) == before


class Unauthorized(http.server.BaseHTTPRequestHandler):
    """A Hub that refuses every request as unauthenticated."""

    def refuse(self) -> None:
        body = b'{"error": "Invalid username or password."}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_hub(hub, tmp_path, monkeypatch) -> Iterator[str]:
    """A local Hub that answers 401 to everything, and no Hugging Face token anywhere; yields its address."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield endpoint
    server.shutdown()
    thread.join()


def test_push_without_a_token_says_how_to_log_in(refusing_hub, run_dir, capsys):
    message = run_cli(["push", str(run_dir), "--repo_id", "acme/unlearned"], capsys)
    assert message == (
        f"could not push to acme/unlearned: the Hub at {refusing_hub} refused it (HTTP 401 Unauthorized: no Hugging "
        f"Face token was found); no commit was made and the run directory {str(run_dir)!r} is unchanged. Run `hf "
        "auth login` or set HF_TOKEN to a token with write access to acme, then run the push again."
    )


def test_the_cached_model_loaded_offline_is_the_one_in_the_cache(hub, tiny_model_dir):
    """The fallback does not load some other copy: the weights are those of the cached snapshot."""
    cache_model(hub, "acme/tiny", tiny_model_dir)
    expected, _ = load_model_and_tokenizer(tiny_model_dir)
    loaded, _ = load_model_and_tokenizer("acme/tiny")
    assert all(torch.equal(a, b) for a, b in zip(expected.parameters(), loaded.parameters(), strict=True))
