"""Which quantized matmul runs where.

- GPU backend: the Triton kernel (quant_gpu), compiled.
- TPU backend: the Mosaic kernel (quant_tpu), compiled.
- Anything else (CPU): XLA's packed path (pallas_kernels/matmul/quant_xla.py: 4-bit weights decoded half-group by
  half-group into two dots, never unpacked into a whole [I, O] copy); the kernels' interpret modes are
  for tests.

impl: "auto" (the above), "xla", "reference" (the twin: dequantize, then one dot), "gpu" or "tpu" (a
kernel by name; on a platform it was not built for it runs in Pallas interpret mode). x may have
leading dims [..., I]; the kernels see [M, I]. The GPU and TPU kernel modules are imported when one is
picked, so the model (layers/linear.py) imports this file without loading Pallas.
"""
from typing import Optional

import jax.numpy as jnp

from pallas_kernels.matmul.formats import pad_inputs
from pallas_kernels.matmul.quant_reference import quant_matmul_reference
from pallas_kernels.matmul.quant_xla import quant_matmul as xla_quant_matmul
from pallas_kernels.platform import family

IMPLS = ("auto", "xla", "reference", "gpu", "tpu")


def pick_impl(impl: str = "auto", platform: Optional[str] = None):
    """(implementation "xla" | "reference" | "gpu" | "tpu", interpret) for impl on a JAX platform (default: the target)."""
    if impl not in IMPLS:
        raise ValueError(f"impl: must be one of {IMPLS}, got {impl!r}")
    fam = family(platform)
    on_gpu, on_tpu = fam == "gpu", fam == "tpu"
    if impl == "auto":
        return ("gpu", False) if on_gpu else ("tpu", False) if on_tpu else ("xla", False)
    if impl == "gpu":
        return "gpu", not on_gpu
    if impl == "tpu":
        return "tpu", not on_tpu
    return impl, False


def quant_matmul(x_MI, qw: dict, fmt, impl: str = "auto", *, platform: Optional[str] = None, **kernel_kw):
    """x [..., I] @ the quantized weight qw (a pallas_kernels/matmul/formats.py pytree of format fmt) -> float32 [..., O].

    kernel_kw (block_k, block_n, num_splits, compute_dtype, ...) go to the kernel; the reference takes none.
    An I short of the stored rows by less than a group (a ragged last group, pallas_kernels/matmul/formats.py) is
    padded with zeros before a kernel (the XLA path pads itself; the reference slices the weight), so the
    kernels always see whole groups.
    """
    which, interpret = pick_impl(impl, platform)
    if which == "xla":
        x = jnp.asarray(x_MI)
        y = xla_quant_matmul(x.reshape(-1, x.shape[-1]), qw, fmt, kernel_kw.pop("compute_dtype", jnp.float32))
        if kernel_kw:
            raise ValueError(f"quant_matmul: the XLA path takes only compute_dtype, got {sorted(kernel_kw)}")
        return y.reshape(*x.shape[:-1], y.shape[-1])
    if which == "reference":
        if kernel_kw:
            raise ValueError(f"quant_matmul: the reference takes no kernel options, got {sorted(kernel_kw)}")
        return quant_matmul_reference(x_MI, qw, fmt)
    x = jnp.asarray(x_MI)
    if x.ndim < 1:
        raise ValueError(f"quant_matmul: x must be [..., I], got shape {x.shape}")
    x = pad_inputs(x, qw, fmt)
    lead = x.shape[:-1]
    if which == "gpu":  # the kernels (and Pallas' Triton / Mosaic lowering) load only when one runs
        from pallas_kernels.matmul.quant_gpu import quant_matmul_gpu as fn
    else:
        from pallas_kernels.matmul.quant_tpu import quant_matmul_tpu as fn
    y = fn(x.reshape(-1, x.shape[-1]), qw, fmt, interpret=kernel_kw.pop("interpret", interpret), **kernel_kw)
    return y.reshape(*lead, y.shape[-1])
