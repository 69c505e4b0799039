"""Pallas kernels, grouped by concern, each beside its pure-JAX reference twin.

    attention/   decode and ragged paged attention (GPU Triton, TPU Mosaic); impl_names.py, the
                 attention_impl names a config accepts
    matmul/      quantized matmul (GPU Triton, TPU Mosaic, XLA's packed path) and formats.py, the stored
                 weight formats
    norm/        residual add + RMSNorm (GPU Triton) beside its twin
    kv_write/    this step's keys (rotated) and values into the page pools (GPU Triton) beside its twin
    gemv/        decode projections, no split-K, add + RMSNorm prologue and SwiGLU epilogue (GPU Triton) beside
                 their twin
    platform.py  the target platform every dispatcher reads
    lazy_names.py  the lazy public names of every package __init__ (PEP 562)
    testing.py   numpy-built random cases for the kernel tests and benchmarks

Kernels never import `layers` or `infer`: the model's attention seam
(`layers/attention/`) imports them, not the other way round (tests/test_boundaries.py checks).

The attention entry points are re-exported here (`pallas_kernels.ragged_paged_attention`) and load on
first use (PEP 562), so importing this package, or platform.py and the plain tables under it, loads no
kernel and no Pallas lowering.
"""
from pallas_kernels.attention import __all__ as _ATTENTION_NAMES
from pallas_kernels.lazy_names import lazy_names

__all__, __getattr__, __dir__ = lazy_names(__name__, {n: "pallas_kernels.attention" for n in _ATTENTION_NAMES})
