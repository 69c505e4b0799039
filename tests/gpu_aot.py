"""Shared by the deviceless compile tests: an H100 or a TPU v5p chip (95 GB: Llama 3 8B's pools fit, a v5e's
16 GB do not) to compile for, or a skip that says why (a
failure under CI, where `make test` installs both compilers: a missing one there is a broken setup, not a reason
to skip)."""
import os

import jax
import numpy as np
import pytest

from infer.perf.aot_target import CompilerMissing, abstract, gpu_topology, replicated, tpu_topology


def _sharding(topology, what):
    try:
        return replicated(topology())
    except CompilerMissing as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"deviceless {what} compile needs its compiler: {e}")


def h100_sharding():
    return _sharding(lambda: gpu_topology("h100"), "GPU")


def tpu_sharding():
    return _sharding(lambda: tpu_topology("v5p"), "TPU")


def compile_for(sharding, fn, *args, **compile_kw):
    """fn compiled for the sharding's (virtual) device at the arguments' shapes (nothing is allocated or run)."""
    args = abstract(jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args), sharding)
    return jax.jit(fn).lower(*args).compile(**compile_kw)
