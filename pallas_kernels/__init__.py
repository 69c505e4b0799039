"""Pallas kernels, grouped by concern, each beside its pure-JAX reference twin.

    attention/  decode and ragged paged attention (GPU Triton, TPU Mosaic)
    testing.py  numpy-built random cases for the kernel tests and benchmarks

Kernels never import `layers` or `infer`: the model's attention seam
(`layers/attention/`) imports them, not the other way round.
"""
from pallas_kernels.attention import *  # noqa: F401,F403
from pallas_kernels.attention import __all__  # noqa: F401
