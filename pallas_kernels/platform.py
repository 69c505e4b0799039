"""The target platform: the hardware family a program is built for, chosen once and read by every dispatcher.

    family()                        -> "gpu" | "tpu" | "cpu"  (the target's; default: JAX's default backend)
    with target_platform("gpu"):    # build the GPU program from a CPU-only process (a deviceless compile)
        jax.jit(step).lower(*abstract_args).compile()

Who asks: the attention kernels' and the quantized matmul's dispatchers (pallas_kernels/*/dispatch.py),
`attention_impl: auto` (layers/attention/registry.py), the decode layout (infer/model/layout.py) and the load
dtype (infer/io/dtype_policy.py). The choice is made when a program is traced, so entering or leaving a target
drops JAX's trace caches: a function traced for one platform is never reused for another.
"""
import contextlib
import contextvars
from typing import Iterator, Optional

import jax

FAMILIES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}  # platform name -> family
_TARGET = contextvars.ContextVar("target_platform", default=None)


def family(platform: Optional[str] = None) -> str:
    """"gpu", "tpu" or "cpu" for `platform` (a JAX platform name), else the target set by `target_platform`,
    else JAX's default backend. An unknown name is refused, naming the known ones."""
    name = platform or _TARGET.get() or jax.default_backend()
    if name not in FAMILIES:
        raise ValueError(f"platform {name!r}: expected one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def current_target() -> Optional[str]:
    """The family set by an enclosing `target_platform`, or None (the default backend decides)."""
    return _TARGET.get()


@contextlib.contextmanager
def target_platform(name: str) -> Iterator[str]:
    """Trace programs for `name`'s family ("gpu", "cuda", "rocm", "tpu" or "cpu") inside the block, whatever
    backend this process runs on; yields the family."""
    fam = family(name)
    token = _TARGET.set(fam)
    jax.clear_caches()
    try:
        yield fam
    finally:
        _TARGET.reset(token)
        jax.clear_caches()
