"""XLA flags this stack asks for before JAX starts a backend (`import infer` applies them).

- `--xla_cpu_prefer_vector_width=512` on a CPU with AVX-512: XLA's CPU backend emits a batch-1
  matrix-vector product (every projection of a batch-1 decode step) as its own single-threaded
  loop, compiled for 256-bit vectors by default; with 512-bit vectors SmolLM2's float32 decode
  step at batch 1 is ~10% faster (`python scripts/xla_flag_probe.py`; BENCHMARKS.md "Kept: 512-bit
  vectors"); batch 8 (Eigen's matmul) is unchanged. The flag only concerns the CPU backend.

A flag the caller already put in XLA_FLAGS is left as it is; INFER_NO_XLA_FLAGS=1 applies none.
XLA reads XLA_FLAGS when it creates a backend, so this has no effect once one exists (e.g. when
JAX computed something before `import infer`).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

OPT_OUT = "INFER_NO_XLA_FLAGS"


def cpu_flags() -> set:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_flags(features: Optional[set] = None) -> Dict[str, str]:
    """{flag name: value} this stack wants on this machine."""
    features = cpu_flags() if features is None else features
    return {"xla_cpu_prefer_vector_width": "512"} if "avx512f" in features else {}


def apply_default_xla_flags(environ=None, features: Optional[set] = None) -> str:
    """Append the default flags the caller has not set to XLA_FLAGS in `environ` (default os.environ); returns
    the resulting XLA_FLAGS."""
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "")
    if env.get(OPT_OUT):
        return current
    extra = [f"--{k}={v}" for k, v in default_flags(features).items() if f"--{k}" not in current]
    if extra:
        env["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return env.get("XLA_FLAGS", "")


# Command buffers (CUDA graphs) around whole loops on a GPU. XLA's default command buffers leave while loops and
# conditionals out, so the on-device generation loop submits each trip's kernels from the host (SmolLM2-135M at
# batch 1: 346 host submissions per token) and the engine's step (its sampling filters sit under a lax.cond) 338;
# with WHILE and CONDITIONAL in the list each is one submission (`python -m infer.perf.gpu_program --model
# smollm2-135m --programs generate,engine_decode`). Passed per program (jax.jit(compiler_options=...)); the CPU and
# TPU compilers ignore this GPU option.
LOOP_COMPILER_OPTIONS = {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"}
