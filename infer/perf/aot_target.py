"""Compile for an accelerator on a machine without one: XLA's GPU or TPU compiler run deviceless.

    topo = gpu_topology("h100")                     # one H100, described by configs/hardware/h100.target.txtpb
    topo = tpu_topology("v5e")                      # a v5e 2x2 slice, described by libtpu itself
    args = abstract(tree, replicated(topo))         # ShapeDtypeStructs placed on one (virtual) device
    jax.jit(f).lower(*args).compile()               # the whole pipeline: fusion, Triton/Mosaic, machine code

GPU: the CUDA PJRT plugin at jax's own version (`jax-cuda12-plugin`, no nvidia-* wheels: nothing runs). TPU:
`libtpu` at the version jax's `tpu` extra names. Installed into the environment they are found as usual;
otherwise they are looked up in $INFER_GPU_AOT_PATH / $INFER_TPU_AOT_PATH or <python prefix>/gpu-aot and
<python prefix>/tpu-aot (where `make gpu-aot` / `make tpu-aot` install them, outside site-packages, so that JAX
in the same environment never tries, and loudly fails, to start that backend on a CPU-only machine). Programs
traced for a target pick its kernels through pallas_kernels/platform.py's `target_platform(...)`.
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


# the smallest slices libtpu describes without a host; a program compiles for one chip of it
TPU_TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
TPU_PATH_ENV = "INFER_TPU_AOT_PATH"


class CompilerMissing(RuntimeError):
    """The plugin needed for a deviceless compile is not installed."""



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
        raise CompilerMissing(
            f"no CUDA compiler plugin: {PLUGIN_MODULE} is not installed and {where} does not hold it. Install it "
            f"with `make gpu-aot`, or `pip install --no-deps --target {where} jax-cuda12-plugin=={plugin_version()} "
            f"jax-cuda12-pjrt=={plugin_version()}` (or set {PLUGIN_PATH_ENV})")
    # a deviceless compile needs no CUDA runtime: without this the plugin refuses to register (here, and again
    # in JAX's own plugin discovery) on a machine without one, unless JAX_PLATFORMS leaves CUDA out
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
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


def tpu_topology(target: str = "v5e"):
    """A TPU slice of `target` (a key of TPU_TOPOLOGIES) described by libtpu, no TPU attached."""
    if target not in TPU_TOPOLOGIES:
        raise ValueError(f"target {target!r}: expected one of {', '.join(sorted(TPU_TOPOLOGIES))}")
    try:
        importlib.import_module("libtpu")
    except ImportError:
        where = os.environ.get(TPU_PATH_ENV) or os.path.join(sys.prefix, "tpu-aot")
        if not os.path.isdir(os.path.join(where, "libtpu")):
            raise CompilerMissing(f"no TPU compiler: libtpu is not installed and {where} does not hold it; install "
                                  f"it with `make tpu-aot` (or set {TPU_PATH_ENV})") from None
        sys.path.append(where)
        importlib.invalidate_caches()
    # several processes (test workers) may hold libtpu at once: no TPU is opened, so its lock file is not needed
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    return topologies.get_topology_desc(topology_name=TPU_TOPOLOGIES[target], platform="tpu")


def replicated(topology) -> NamedSharding:
    """Whole arrays on the topology's first device (a one-chip program)."""
    return NamedSharding(Mesh(topology.devices[:1], ("d",)), PartitionSpec())


def abstract(tree, sharding):
    """Every array-like leaf of `tree` as a ShapeDtypeStruct placed by `sharding` (no memory allocated)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
