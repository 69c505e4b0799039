"""Rotary position embeddings (half-split "rotate_half" layout, as in Hugging Face Llama).

Variants: standard (theta), Llama-3 frequency scaling and linear scaling,
selected by ModelConfig.rope_scaling.
"""
import math

import jax.numpy as jnp
import numpy as np


def inv_frequencies(head_dim: int, theta: float, scaling=None) -> np.ndarray:
    """Inverse frequencies [H/2] in float64 numpy (constants folded into the program)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is None:
        return inv
    if scaling.type == "linear":
        return inv / scaling.factor
    if scaling.type == "llama3":
        low_wl = scaling.original_max_position_embeddings / scaling.low_freq_factor
        high_wl = scaling.original_max_position_embeddings / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / scaling.factor, inv)
        smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        return np.where(medium, smoothed, scaled)
    raise ValueError(f"rope_scaling.type: unsupported {scaling.type!r}")


def apply_rope(x_BTnH, positions_BT, inv_freq):
    """Rotate x [B, T, n, H] by its positions [B, T]; computed in float32."""
    inv = jnp.asarray(inv_freq, jnp.float32)  # [H/2]
    angles = positions_BT.astype(jnp.float32)[..., None] * inv  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x_BTnH.astype(jnp.float32)
    half = xf.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x_BTnH.dtype)
