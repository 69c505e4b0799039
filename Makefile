# Quickstart targets. Each sets up the virtual environment it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean-venv

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The main job: generate with the demo model and print TTFT / latency / throughput.
demo: $(BIN)/.installed
	$(BIN)/python -m infer generate --config small --max-new-tokens 64

# The test suite (CPU; Pallas kernels in interpret mode).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 tests

# Every benchmark experiment in configs/experiments/ on the current device.
bench: $(BIN)/.installed
	$(BIN)/python -m infer.bench --out results/bench

clean-venv:
	rm -rf $(VENV)
