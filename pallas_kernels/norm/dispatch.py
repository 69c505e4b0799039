"""Which add + RMSNorm runs where: the Triton kernel for a GPU target (row widths it supports, no device mesh),
the pure-JAX twin elsewhere (XLA's CPU and TPU fusions; a mesh's partitioner cannot split a Pallas call)."""
from typing import Optional

import jax

from pallas_kernels.norm.add_rms_norm_reference import add_rms_norm_reference
from pallas_kernels.platform import family


def add_rms_norm(x, delta, w_D, eps: float, platform: Optional[str] = None):
    """(h = x + delta, RMSNorm(h) * w) over the last axis of x, delta [..., D] (contract: the reference)."""
    from pallas_kernels.norm.add_rms_norm_gpu import add_rms_norm_gpu, supported
    D = x.shape[-1]
    if family(platform) != "gpu" or not supported(D) or not jax.sharding.get_abstract_mesh().empty:
        return add_rms_norm_reference(x, delta, w_D, eps)
    h, y = add_rms_norm_gpu(x.reshape(-1, D), delta.astype(x.dtype).reshape(-1, D), w_D.astype(x.dtype), eps)
    return h.reshape(x.shape), y.reshape(x.shape)
