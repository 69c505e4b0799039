"""Normalization kernels beside their pure-JAX twin.

    add_rms_norm_reference.py  the twin: h = x + delta, y = RMSNorm(h) * w (the model's order and dtypes)
    add_rms_norm_gpu.py        Triton: both in one kernel, one row per program
    dispatch.py                the GPU kernel on a GPU target, the twin elsewhere

Public names load on first use (pallas_kernels/lazy_names.py).
"""
from pallas_kernels.lazy_names import lazy_names

_HOMES = {
    "add_rms_norm": "pallas_kernels.norm.dispatch",
    "add_rms_norm_reference": "pallas_kernels.norm.add_rms_norm_reference",
    "add_rms_norm_gpu": "pallas_kernels.norm.add_rms_norm_gpu",
}
__all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)
