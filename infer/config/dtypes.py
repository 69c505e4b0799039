"""The dtype names a setting accepts, and the one normalization every dtype argument goes through.

    DTYPES            parameter and compute dtypes (ModelConfig.dtype, the loaders' dtype=, the CLIs' --dtype)
    KV_CACHE_DTYPES   the KV page pools' (ModelConfig.kv_cache_dtype, the CLIs' --kv-cache-dtype): a compute
                      dtype, or "int8" (int8 values with a float32 scale per token and head)
    dtype_name(x)     "bfloat16" for "bfloat16", jnp.bfloat16, np.dtype("bfloat16") alike

Settings hold the name (a string keeps ModelConfig hashable, a valid static jit argument); JAX users pass
dtypes, so every public dtype argument is read through dtype_name before it is checked against these tuples.
"""
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = DTYPES + ("int8",)


def dtype_name(dtype):
    """The name of a dtype given as a name, a JAX / numpy dtype or scalar type; None stays None. A value that is
    no dtype at all is returned unchanged, so the caller's check refuses it by name."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    try:
        return jnp.dtype(dtype).name
    except TypeError:
        return dtype
