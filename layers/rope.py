"""Rotary position embeddings (half-split "rotate_half" layout, as in Hugging Face Llama).

Variants: standard (theta), Llama-3 frequency scaling, linear scaling and YaRN
(DeepSeek-V2/V3), selected by ModelConfig.rope_scaling. YaRN also scales cos/sin
by an attention factor (`attention_factor`) and, in MLA, the softmax scale
(`yarn_softmax_mscale`). Checkpoints whose RoPE pairs are interleaved (x0, x1),
(x2, x3), ... (DeepSeek) are de-interleaved by the loader, so the math here is
always half-split.
"""
import math

import jax.numpy as jnp
import numpy as np


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_inv(head_dim: int, theta: float, s) -> np.ndarray:
    pos_freqs = theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (s.factor * pos_freqs)

    def correction_dim(rotations):
        return (head_dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(theta))
    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # as the reference implementation: no division by zero
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (high-frequency dims keep theta), 0: interpolate (divide by factor)
    return interpolation * (1 - keep) + extrapolation * keep


def inv_frequencies(head_dim: int, theta: float, scaling=None) -> np.ndarray:
    """Inverse frequencies [H/2] in float64 numpy (constants folded into the program)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is None:
        return inv
    if scaling.type == "linear":
        return inv / scaling.factor
    if scaling.type == "yarn":
        return _yarn_inv(head_dim, theta, scaling)
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


def attention_factor(scaling=None) -> float:
    """The factor cos and sin are multiplied by (YaRN only; 1 otherwise)."""
    if scaling is None or scaling.type != "yarn":
        return 1.0
    if scaling.attention_factor is not None:
        return float(scaling.attention_factor)
    if scaling.mscale and scaling.mscale_all_dim:
        return yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    return yarn_mscale(scaling.factor)


def yarn_softmax_mscale(scaling=None) -> float:
    """MLA's extra softmax-scale factor: mscale(factor, mscale_all_dim)^2 under YaRN with mscale_all_dim, else 1."""
    if scaling is None or scaling.type != "yarn" or not scaling.mscale_all_dim:
        return 1.0
    return yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2


def rope_cos_sin(positions, inv_freq, factor: float = 1.0):
    """(cos, sin) [..., H/2] in float32 of each position's angles (positions [...]), times `factor`: the rotation
    apply_rope makes, and what the KV write kernel takes (pallas_kernels/kv_write/: rotate-half form)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.cos(angles) * factor, jnp.sin(angles) * factor


def apply_rope(x_BTnH, positions_BT, inv_freq, factor: float = 1.0):
    """Rotate x [B, T, n, H] by its positions [B, T]; computed in float32 (cos/sin times `factor`)."""
    c_BTR, s_BTR = rope_cos_sin(positions_BT, inv_freq, factor)
    cos = jnp.concatenate([c_BTR, c_BTR], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    sin = jnp.concatenate([s_BTR, s_BTR], axis=-1)[:, :, None, :]
    xf = x_BTnH.astype(jnp.float32)
    half = xf.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x_BTnH.dtype)
