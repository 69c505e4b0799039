"""The compute dtype a checkpoint loads in when the caller names none: float32 for 16-bit checkpoints on CPU.

    dtype = load_dtype(stored="bfloat16", requested=None)   # "float32" on a CPU backend, with a warning

XLA's CPU backend has no fast bfloat16/float16 matmul inside the model: a one-row bfloat16
dot runs a slow generic loop (21x float32, `scripts/cpu_dot_probe.py`) and bfloat16 dots
inside the model stay slow (in either parameter layout), so SmolLM2-135M decodes 1.1-1.6x slower at batch 1
and 5-9x slower at batch 8 in bfloat16 than in float32 (BENCHMARKS.md, "SmolLM2-135M on CPU:
this stack vs transformers vs llama.cpp", three runs). A checkpoint
stored in bfloat16 or float16 therefore loads as float32 on CPU unless the caller
asks for a dtype: an explicit request is always honoured.
"""
import warnings
from typing import Optional

from infer.config.dtypes import dtype_name
from pallas_kernels.platform import family

SIXTEEN_BIT = ("bfloat16", "float16")
CPU_BF16_SLOWDOWN = "1.1-1.6x at batch 1, 5-9x at batch 8"  # SmolLM2-135M decode, bf16 vs f32 (BENCHMARKS.md)


def load_dtype(stored: str, requested: Optional[str] = None, platform: Optional[str] = None) -> str:
    """The dtype to load and run in: `requested` if given, else `stored`, except float32 for 16-bit on CPU.

    stored: the checkpoint's own dtype; platform: a JAX platform name (default: the target platform, pallas_kernels/platform.py).
    The CPU fallback warns once per load, saying why and how to force the stored dtype.
    """
    if requested is not None:
        return dtype_name(requested)
    if family(platform) == "cpu" and stored in SIXTEEN_BIT:
        warnings.warn(f"checkpoint stored in {stored}: loading it as float32 because the backend is CPU, where "
                      f"XLA's {stored} matmuls are slow (SmolLM2-135M decodes {CPU_BF16_SLOWDOWN} slower in "
                      f"bfloat16 than in float32 there); pass dtype={stored!r} to load it in {stored} anyway", stacklevel=3)
        return "float32"
    return stored
