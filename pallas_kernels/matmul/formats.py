"""Weight formats: how a weight W [I, O] (contracted over I) is stored, quantized and decoded.

One module for the layer, the loaders and the roofline. Every format is integers q plus
per-group float scales along the input dimension I (group = I: one scale per output channel):

    value = (q - zero) * scale            symmetric formats (int8, q8_0, q4_0)
    value = q * scale + min               affine formats (int4-gN, q4_1): a min per group too

    name        bits  group  q range   zero  min   scale/min dtype   GGUF type
    int8          8   I      -127..127   0    no    float32           -
    int4-g32      4   32     0..15       0    yes   float32           -  (q4_1's layout, float32 scales)
    int4-g64      4   64     0..15       0    yes   float32           -
    int4-g128     4   128    0..15       0    yes   float32           -
    q8_0          8   32     -128..127   0    no    float16           Q8_0
    q4_0          4   32     0..15       8    no    float16           Q4_0
    q4_1          4   32     0..15       0    yes   float16           Q4_1

Storage (a plain pytree): "q" int8 [I, O] (8-bit) or uint8 [I / 2, O] (4-bit, two per byte:
within each group of g inputs, byte j holds input j in its low nibble and input j + g/2 in its
high nibble, which is GGUF's block layout, so a GGUF block is re-laid out, never decoded);
"scale" [I / g, O]; "min" [I / g, O] for affine formats. When I is not a multiple of g (SmolLM2's
D = 576 with g = 128) the stored rows are padded to the next multiple, I_s = ceil(I / g) * g, by repeating the
last input row (so the last group's range is the real rows' range); the matmul pads x with zeros to I_s, so
the padded rows never contribute, and `dequantize(..., in_features=I)` drops them. GGUF's decode order is kept
((q - zero) * scale, q * scale + min, in float32), so GGUF tensors decode bit for bit as
`gguf.quants.dequantize` does.

Library check: `qwix` quantizes by intercepting Flax modules (its own parameter classes) and
`tokamax` ships kernels, neither reads GGUF blocks nor keeps our explicit [I, O] pytree with GGUF's
nibble order; the formats here are a few array reshapes, so they are written out.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: int  # 4 or 8
    group: Optional[int]  # inputs per scale; None: the whole input dimension (per output channel)
    zero: int  # subtracted from q before scaling
    has_min: bool  # affine: + min per group
    scale_dtype: str  # storage dtype of scale and min
    gguf_type: Optional[str] = None  # the GGUF tensor type stored this way

    def group_size(self, I: int) -> int:
        """Inputs per scale for an input dimension I (I itself for per-channel formats)."""
        g = self.group or I
        if self.bits == 4 and g % 2:
            raise ValueError(f"{self.name}: a 4-bit group packs pairs, so it must be even (input dimension {I})")
        return g

    def stored_inputs(self, I: int) -> int:
        """I_s: the stored input rows, I rounded up to a whole number of groups."""
        g = self.group_size(I)
        return -(-I // g) * g


FORMATS: Dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("int8", 8, None, 0, False, "float32"),
    WeightFormat("int4-g32", 4, 32, 0, True, "float32"),
    WeightFormat("int4-g64", 4, 64, 0, True, "float32"),
    WeightFormat("int4-g128", 4, 128, 0, True, "float32"),
    WeightFormat("q8_0", 8, 32, 0, False, "float16", "Q8_0"),
    WeightFormat("q4_0", 4, 32, 8, False, "float16", "Q4_0"),
    WeightFormat("q4_1", 4, 32, 0, True, "float16", "Q4_1"),
)}
GGUF_FORMATS = {f.gguf_type: f for f in FORMATS.values() if f.gguf_type}


def get_format(name) -> WeightFormat:
    """The WeightFormat of a name (a WeightFormat passes through)."""
    if isinstance(name, WeightFormat):
        return name
    if name not in FORMATS:
        raise ValueError(f"weight format {name!r}: must be one of {sorted(FORMATS)}")
    return FORMATS[name]


# ---- 4-bit packing --------------------------------------------------------------------------------------------
def pack_nibbles(q_IO, g: int):
    """uint8 values in [0, 16) [I, O] -> [I / 2, O]: per group of g inputs, byte j = q[j] | q[j + g/2] << 4."""
    q = np.asarray(q_IO, np.uint8)
    I, O = q.shape
    q = q.reshape(I // g, 2, g // 2, O)
    return (q[:, 0] | (q[:, 1] << np.uint8(4))).reshape(I // 2, O)


def unpack_nibbles(p, g: int):
    """The inverse of pack_nibbles (jnp: runs inside jit on the packed bytes)."""
    half, O = p.shape
    p = jnp.asarray(p).reshape(half * 2 // g, 1, g // 2, O)
    both = jnp.concatenate([p & 0x0F, p >> 4], axis=1)  # [I/g, 2, g/2, O]
    return both.reshape(half * 2, O)


def pad_inputs(x, qw: dict, fmt: WeightFormat | str):
    """x [..., I] padded with zeros to the weight's stored rows I_s (padded rows then add nothing)."""
    fmt = get_format(fmt)
    I_s = qw["q"].shape[0] * (2 if fmt.bits == 4 else 1)
    I = x.shape[-1]
    if I == I_s:
        return x
    if not I_s - fmt.group_size(I_s) < I < I_s:
        raise ValueError(f"x: input dimension I={I} does not match the weight's {I_s} stored rows "
                         f"(x {tuple(x.shape)}, q {tuple(qw['q'].shape)}, format {fmt.name})")
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, I_s - I)])


# ---- round to nearest -----------------------------------------------------------------------------------------
def quantize(w_IO, fmt: WeightFormat | str) -> dict:
    """Round-to-nearest quantization of a float weight [I, O] (numpy, on the host) into the format's pytree."""
    fmt = get_format(fmt)
    w = np.asarray(w_IO, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize: expected a 2-D weight [I, O], got shape {w.shape}")
    I, O = w.shape
    g = fmt.group_size(I)
    if I % g:  # a ragged last group: repeat the last row so the group's range stays the real rows'
        w = np.pad(w, ((0, fmt.stored_inputs(I) - I), (0, 0)), mode="edge")
        I = w.shape[0]
    wg = w.reshape(I // g, g, O)
    sdt = np.dtype(fmt.scale_dtype)
    out = {}
    if fmt.bits == 8:
        amax = np.abs(wg).max(axis=1)
        scale = (amax / 127.0).astype(sdt)
        s = scale.astype(np.float32)[:, None]
        q = np.clip(np.round(np.divide(wg, s, out=np.zeros_like(wg), where=s != 0)), -127, 127).astype(np.int8)
        out["q"] = q.reshape(I, O)
    elif fmt.has_min:
        lo, hi = wg.min(axis=1), wg.max(axis=1)
        scale = ((hi - lo) / 15.0).astype(sdt)
        mn = lo.astype(sdt)
        s, m = scale.astype(np.float32)[:, None], mn.astype(np.float32)[:, None]
        q = np.clip(np.round(np.divide(wg - m, s, out=np.zeros_like(wg), where=s != 0)), 0, 15).astype(np.uint8)
        out["q"], out["min"] = pack_nibbles(q.reshape(I, O), g), mn
    else:  # symmetric 4-bit with zero 8: the largest-magnitude value lands exactly on q = 0 (GGUF's Q4_0 rule)
        idx = np.abs(wg).argmax(axis=1)[:, None]
        big = np.take_along_axis(wg, idx, axis=1)[:, 0]
        scale = (big / -8.0).astype(sdt)
        s = scale.astype(np.float32)[:, None]
        q = np.clip(np.round(np.divide(wg, s, out=np.zeros_like(wg), where=s != 0)) + fmt.zero, 0, 15)
        out["q"] = pack_nibbles(q.astype(np.uint8).reshape(I, O), g)
    out["scale"] = scale
    return out


def dequantize(qw: dict, fmt: WeightFormat | str, dtype=jnp.float32, in_features: Optional[int] = None):
    """The weight [I, O] a format's pytree stands for, in float32 (GGUF's operation order), cast to dtype.

    in_features: the true I when the stored rows were padded to whole groups (default: every stored row)."""
    fmt = get_format(fmt)
    q = jnp.asarray(qw["q"])
    I = q.shape[0] * (2 if fmt.bits == 4 else 1)
    O = q.shape[1]
    g = fmt.group_size(I)
    if fmt.bits == 4:
        q = unpack_nibbles(q, g)
    qf = q.astype(jnp.float32).reshape(I // g, g, O)
    scale = jnp.asarray(qw["scale"]).astype(jnp.float32)[:, None]
    if fmt.has_min:
        w = qf * scale + jnp.asarray(qw["min"]).astype(jnp.float32)[:, None]
    else:
        w = scale * (qf - fmt.zero) if fmt.zero else scale * qf
    w = w.reshape(I, O)
    if in_features is not None:
        if not I - g < in_features <= I:
            raise ValueError(f"in_features: {in_features} does not fit {I} stored rows of {g}-input groups "
                             f"(format {fmt.name})")
        w = w[:in_features]
    return w.astype(dtype)


# ---- GGUF blocks ----------------------------------------------------------------------------------------------
def from_gguf(raw, gguf_type: str, shape_OI) -> dict:
    """A GGUF Q8_0 / Q4_0 / Q4_1 tensor (raw block bytes of a row-major [O, I] matrix) as our [I, O] pytree.

    The blocks are re-laid out (transposed, split into q / scale / min); no value is decoded."""
    if gguf_type not in GGUF_FORMATS:
        raise ValueError(f"GGUF tensor type {gguf_type!r}: natively supported are {sorted(GGUF_FORMATS)}")
    fmt = GGUF_FORMATS[gguf_type]
    O, I = shape_OI
    g = fmt.group_size(I)
    if I % g:
        raise ValueError(f"GGUF {gguf_type}: row length {I} is not a multiple of its block size {g}")
    nb = I // g
    head = 4 if fmt.has_min else 2
    block = head + (g if fmt.bits == 8 else g // 2)
    b = np.asarray(raw, np.uint8).reshape(O, nb, block)
    out = {"scale": np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0].T.copy()}
    if fmt.has_min:
        out["min"] = np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0].T.copy()
    qs = np.ascontiguousarray(b[..., head:])
    if fmt.bits == 8:
        out["q"] = qs.view(np.int8).reshape(O, I).T.copy()
    else:
        out["q"] = qs.reshape(O, I // 2).T.copy()  # per block: 16 bytes, low nibble j, high nibble j + 16
    return out


# ---- bytes ----------------------------------------------------------------------------------------------------
def weight_bytes(fmt: WeightFormat | str, I: int, O: int) -> int:
    """Bytes a [I, O] weight takes in the format (integers + scales + mins, over the stored rows I_s)."""
    fmt = get_format(fmt)
    g = fmt.group_size(I)
    I = fmt.stored_inputs(I)
    per_scale = np.dtype(fmt.scale_dtype).itemsize * (2 if fmt.has_min else 1)
    return I * O * fmt.bits // 8 + (I // g) * O * per_scale


def bytes_per_param(fmt: WeightFormat | str, I: int = 4096) -> float:
    """Average bytes per weight for an input dimension I (per-channel formats amortise their scale over I)."""
    return weight_bytes(fmt, I, 128) / (I * 128)
