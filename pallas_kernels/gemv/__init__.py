"""Decode projections (a few rows times a float weight) as one kernel each, beside the pure-JAX twin.

    gemv_reference.py  the twin: x @ W in float32, rounded once; the add + RMSNorm prologue and SwiGLU epilogue
    gemv_gpu.py        Triton: no split-K, one launch per projection, the norm and SwiGLU folded in
    expert_gemv_reference.py, expert_gemv_gpu.py   a mixture-of-experts decode step's expert projections: each
                       assignment (token, picked expert) reads its expert's slice of the stacked [E, K, N] weight
    dispatch.py        the GPU kernels on a GPU target, the twins elsewhere

Public names load on first use (pallas_kernels/lazy_names.py).
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {
    "gemv": "pallas_kernels.gemv.dispatch",
    "gemv_applies": "pallas_kernels.gemv.dispatch",
    "gemv_gpu": "pallas_kernels.gemv.gemv_gpu",
    "gemv_reference": "pallas_kernels.gemv.gemv_reference",
    "expert_gemv": "pallas_kernels.gemv.dispatch",
    "expert_gemv_gpu": "pallas_kernels.gemv.expert_gemv_gpu",
    "expert_gemv_reference": "pallas_kernels.gemv.expert_gemv_reference",
    "fused_gemv_reference": "pallas_kernels.gemv.gemv_reference",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)
