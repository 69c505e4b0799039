"""Compile for a GPU on a machine without one: XLA's CUDA compiler run deviceless against a target description.

    topo = gpu_topology("h100")                     # one H100, described by configs/hardware/h100.target.txtpb
    args = abstract(tree, replicated(topo))         # ShapeDtypeStructs placed on that (virtual) device
    jax.jit(f).lower(*args).compile()               # XLA's whole GPU pipeline: fusion, Triton, PTX, thunks

It needs the CUDA PJRT plugin at jax's own version (`jax-cuda12-plugin`, no nvidia-* wheels: nothing runs).
Installed into the environment it is found as usual; otherwise it is looked up in $INFER_GPU_AOT_PATH or
<python prefix>/gpu-aot (where `make gpu-aot` installs it, outside site-packages, so that JAX in the same
environment never tries, and loudly fails, to start a CUDA backend on a CPU-only machine). Programs traced
for the GPU pick the GPU kernels through pallas_kernels/platform.py's `target_platform("gpu")`.
"""
from __future__ import annotations

import importlib
import os
import sys

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infer.config.paths import REPO_ROOT

TARGETS = {"h100": os.path.join(REPO_ROOT, "configs", "hardware", "h100.target.txtpb")}
PLUGIN_MODULE = "jax_plugins.xla_cuda12"
PLUGIN_PATH_ENV = "INFER_GPU_AOT_PATH"


class GpuCompilerMissing(RuntimeError):
    """The CUDA plugin needed for a deviceless GPU compile is not installed."""


def plugin_dir() -> str:
    """Where the plugin is looked for when the environment lacks it."""
    return os.environ.get(PLUGIN_PATH_ENV) or os.path.join(sys.prefix, "gpu-aot")


def plugin_version() -> str:
    """The jaxlib version the plugin must match (pip: jax-cuda12-plugin==this jax-cuda12-pjrt==this)."""
    import jaxlib
    return jaxlib.__version__


def load_plugin():
    """The CUDA plugin module, importing it from plugin_dir() if the environment lacks it."""
    try:
        return importlib.import_module(PLUGIN_MODULE)
    except ImportError:
        pass
    where = plugin_dir()
    if not os.path.isdir(os.path.join(where, "jax_plugins", "xla_cuda12")):
        raise GpuCompilerMissing(
            f"no CUDA compiler plugin: {PLUGIN_MODULE} is not installed and {where} does not hold it. Install it "
            f"with `make gpu-aot`, or `pip install --no-deps --target {where} jax-cuda12-plugin=={plugin_version()} "
            f"jax-cuda12-pjrt=={plugin_version()}` (or set {PLUGIN_PATH_ENV})")
    sys.path.append(where)
    importlib.invalidate_caches()
    return importlib.import_module(PLUGIN_MODULE)


def gpu_topology(target: str = "h100"):
    """A one-GPU topology of `target` (a key of TARGETS) whose devices programs can be compiled for."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {', '.join(sorted(TARGETS))}")
    from jax.experimental import topologies
    plugin = load_plugin()
    config = open(TARGETS[target], encoding="utf-8").read()
    try:
        return topologies.get_topology_desc(platform="cuda", target_config=config, topology="1x1x1")
    except NotImplementedError:  # JAX's backends started before the plugin was on the path: register it now
        plugin.initialize()
        return topologies.get_topology_desc(platform="cuda", target_config=config, topology="1x1x1")


def replicated(topology) -> NamedSharding:
    """Whole arrays on the topology's (one) device."""
    return NamedSharding(Mesh(topology.devices, ("d",)), PartitionSpec())


def abstract(tree, sharding):
    """Every array-like leaf of `tree` as a ShapeDtypeStruct placed by `sharding` (no memory allocated)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
