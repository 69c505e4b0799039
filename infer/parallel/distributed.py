"""Several processes as one JAX runtime: `jax.distributed.initialize` from flags or the environment.

    initialize(coordinator="10.0.0.1:1234", num_processes=2, process_id=0)   # or, from the environment:
    INFER_COORDINATOR=10.0.0.1:1234 INFER_NUM_PROCESSES=2 INFER_PROCESS_ID=0 python -m infer generate ... --tp 2

After it, `jax.devices()` lists every process's devices, so a mesh from `make_mesh` spans hosts and
`generate(..., mesh=)` runs one tensor-parallel program across them (every process runs the same
program on the same inputs: SPMD). On CPU the cross-process collectives use gloo. Results that live on
other processes' devices come back through `to_host`.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

ENV = {"coordinator": "INFER_COORDINATOR", "num_processes": "INFER_NUM_PROCESSES", "process_id": "INFER_PROCESS_ID"}


def settings_from_env(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                      process_id: Optional[int] = None) -> Optional[dict]:
    """The three settings (arguments first, then INFER_* variables); None when none is given, an error naming
    the missing one when only some are."""
    got = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for k, var in ENV.items():
        if got[k] is None and os.environ.get(var):
            got[k] = os.environ[var]
    if all(v is None for v in got.values()):
        return None
    for k, v in got.items():
        if v is None:
            raise ValueError(f"{k}: missing (set it or {ENV[k]}; a multi-process run needs coordinator, "
                             f"num_processes and process_id)")
    try:
        n, i = int(got["num_processes"]), int(got["process_id"])
    except ValueError:
        raise ValueError(f"num_processes / process_id: must be ints, got {got['num_processes']!r}, "
                         f"{got['process_id']!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"process_id: must be in [0, num_processes={n}), got {i}")
    return {"coordinator_address": str(got["coordinator"]), "num_processes": n, "process_id": i}


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
    """Join the multi-process runtime if settings are given (here or in the environment); False if none are."""
    s = settings_from_env(coordinator, num_processes, process_id)
    if s is None:
        return False
    if (os.environ.get("JAX_PLATFORMS") or "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**s)
    return True


def to_host(tree):
    """Arrays (any pytree of them) as numpy on this process, in one transfer when all of them are here;
    otherwise each directly when replicated, else gathered from the other processes."""
    leaves = jax.tree_util.tree_leaves(tree)
    if all(x.is_fully_addressable for x in leaves):
        return jax.device_get(tree)
    return jax.tree_util.tree_map(_leaf_to_host, tree)


def _leaf_to_host(x) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
