"""Pallas kernels, grouped by concern, each beside its pure-JAX reference twin.

    attention/   decode and ragged paged attention (GPU Triton, TPU Mosaic); impl_names.py, the
                 attention_impl names a config accepts
    matmul/      quantized matmul (GPU Triton, TPU Mosaic, XLA's packed path) and formats.py, the stored
                 weight formats
    platform.py  the target platform every dispatcher reads
    testing.py   numpy-built random cases for the kernel tests and benchmarks

Kernels never import `layers` or `infer`: the model's attention seam
(`layers/attention/`) imports them, not the other way round (tests/test_boundaries.py checks).

The attention entry points are re-exported here (`pallas_kernels.ragged_paged_attention`) and load on
first use (PEP 562), so importing this package, or platform.py and the plain tables under it, loads no
kernel and no Pallas lowering.
"""
import importlib

from pallas_kernels.attention import __all__  # noqa: F401  (the attention package's names, none loaded yet)


def __getattr__(name):
    """Read an attention entry point from pallas_kernels.attention when first asked for (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("pallas_kernels.attention"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
