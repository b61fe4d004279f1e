# Set-up and the two commands the README starts with. `make demo` runs the main job; `make test`
# sets up and runs the test suite (what CI runs through .ci/run).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines take the locally served CPU build of torch (an unpinned torch pulls GBs of CUDA
# wheels). On a machine with an NVIDIA driver we keep whatever torch is installed, or let pip choose.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup test demo experiments bench gpu-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
		else $(BIN)/pip install -q "$(TORCH_CPU)"; fi; \
	fi
	$(BIN)/pip install -q -e ".[test]"

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python -m trainers.demo

# The papers' claims at small scale (about an hour on 2 CPU cores; re-run the same command to resume).
experiments: setup
	$(BIN)/python -m trainers.experiments --output runs/experiments

# On a GPU machine: attention parity (sdpa/flex/flash, bf16, fwd+bwd, every mask kind), kernel speed, a ~1B
# training step's MFU, sampler tokens/s per KV cache, FSDP2 (under 8 minutes). On CPU: the parity part.
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
