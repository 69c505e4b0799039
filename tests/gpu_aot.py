"""Shared by the deviceless GPU compile tests: the H100 topology, or a skip that says why (a failure under CI,
where `make test` installs the compiler: a missing plugin there is a broken setup, not a reason to skip)."""
import os

import jax
import numpy as np
import pytest

from infer.perf.gpu_target import GpuCompilerMissing, abstract, gpu_topology, replicated


def h100_sharding():
    try:
        return replicated(gpu_topology("h100"))
    except GpuCompilerMissing as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"deviceless GPU compile needs the CUDA plugin: {e}")


def compile_for(sharding, fn, *args, **compile_kw):
    """fn compiled by XLA's CUDA pipeline for the H100 at the arguments' shapes (nothing is allocated or run)."""
    args = abstract(jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args), sharding)
    return jax.jit(fn).lower(*args).compile(**compile_kw)
