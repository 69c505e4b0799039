"""The attention-implementation registry: names (as in ModelConfig.attention_impl) -> implementations.

Built in: "reference" (pure JAX, layers/attention/impls.py) and "pallas" (the
Pallas kernels). "auto", the default, resolves when the step is traced: the
Pallas kernels on GPU and TPU, the reference on CPU. A new implementation is
added with `register(name, fn)`; ModelConfig accepts any registered name.
"""
from typing import Callable, Dict, Tuple

import jax

from layers.attention import impls

AUTO = "auto"
_IMPLS: Dict[str, Callable] = {"reference": impls.reference, "pallas": impls.pallas}


def register(name: str, fn: Callable) -> None:
    """Add an implementation with the signature documented in layers/attention/impls.py."""
    if name == AUTO:
        raise ValueError(f"attention_impl: {AUTO!r} is reserved (it picks an implementation per backend)")
    _IMPLS[name] = fn


def names() -> Tuple[str, ...]:
    """Every name ModelConfig.attention_impl accepts."""
    return (AUTO,) + tuple(sorted(_IMPLS))


def resolve(name: str, platform: str = None) -> str:
    """The registered name that runs for `name` on `platform` (default: JAX's default backend)."""
    if name == AUTO:
        platform = platform or jax.default_backend()
        return "pallas" if platform in ("gpu", "cuda", "rocm", "tpu") else "reference"
    if name not in _IMPLS:
        raise ValueError(f"attention_impl: unknown implementation {name!r}; registered: {names()}")
    return name


def get(name: str) -> Callable:
    return _IMPLS[resolve(name)]
