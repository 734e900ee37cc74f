"""The packaged configs and suites (llm_unlearn.resources) are the repository's files, and the command line falls
back to them for a configs/...yaml or eval/...yaml path that does not exist in the current directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_unlearn import demo
from llm_unlearn.cli import with_packaged_configs
from llm_unlearn.resources import config_path, packaged_path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    *sorted(str(p.relative_to(ROOT)) for d in ("builtin", "tofu", "accelerate") for p in (ROOT / "configs" / d).glob("*.yaml")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "eval").glob("*.yaml")),
]  # fmt: skip


@pytest.mark.parametrize("relative", SHIPPED)
def test_packaged_files_are_the_repository_files(relative):
    assert packaged_path(relative).read_bytes() == (ROOT / relative).read_bytes()


def test_demo_defaults_are_packaged():
    assert Path(demo.DemoArguments().configs_dir) == packaged_path("configs/builtin")
    assert Path(demo.DemoArguments().eval_suite) == packaged_path("eval/builtin.yaml")


@pytest.mark.parametrize("relative", ["eval/run.py", "eval/gate.py", "configs/builtin/none.yaml", "README.md",
                                      "../configs/builtin/finetune.yaml", "/etc/hostname"])  # fmt: skip
def test_only_configs_and_suites_are_packaged(relative):
    with pytest.raises(FileNotFoundError):
        packaged_path(relative)


def test_missing_paths_fall_back_to_the_packaged_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("configs/builtin/graddiff_lora.yaml") == str(
        packaged_path("configs/builtin/graddiff_lora.yaml")
    )
    assert config_path("./eval/builtin.yaml") == str(packaged_path("eval/builtin.yaml"))
    # A file of that name here wins; anything the package does not ship is left for its reader to report.
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "builtin.yaml").write_text("splits: {}\n")
    kept = ("eval/builtin.yaml", "eval/mine.yaml", "configs/builtin", "outputs/x.yaml", "/abs/eval/x.yaml")
    assert [config_path(path) for path in kept] == list(kept)
    args = ["--config", "eval/tofu.yaml", "--recipe=configs/tofu/npo.yaml", "--output_dir", "configs/new", "-h"]  # fmt: skip
    assert with_packaged_configs(args) == [
        "--config", str(packaged_path("eval/tofu.yaml")), f"--recipe={packaged_path('configs/tofu/npo.yaml')}",
        "--output_dir", "configs/new", "-h",
    ]  # fmt: skip
