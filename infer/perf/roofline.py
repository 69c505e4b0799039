"""The transformer performance model: parameters, memory, FLOPs, bytes, intensity, predicted times.

Two models live here.

1. `lecture_stats(cfg, batch_size, seq_len, bandwidth)`: the lecture's model, exactly::

       params     = 2VD + 3DFL + (2DNH + 2DKH)L
       kv_per_seq = S·K·H·L·2·2                       (key + value, bf16)
       memory     = B·kv_per_seq + 2·params           (bf16 weights)
       latency    = memory / bandwidth                (every step reads everything once)
       throughput = B / latency

2. The refined model (`num_params`, `param_bytes`, `predict_decode`, `predict_prefill`, ...),
   the default everywhere else. It differs from the lecture's in exactly these terms:

   - parameters: + the RMSNorm scales (2D per layer + D final), + q/k/v biases (qkv_bias),
     + q/k norm scales (qk_norm); a tied model has one V×D table, not two. Mixture of experts: each MoE
     layer's router [D, E] and E experts' SwiGLU replace its dense MLP (`active_params`: the experts counted
     k/E, what one token multiplies).
   - MoE steps read only the experts their B·T tokens touch: `experts_touched` (expected distinct experts per
     layer, E·(1 - (1 - k/E)^(B·T)) under uniform routing, or from a measured routing) of the expert bytes; FLOPs
     count each token's k experts.
   - bytes read per decode step: the embedding table is *gathered* (B·T rows of D), not read
     (an untied model reads its lm_head [D, V] in full; a tied model reads the shared table
     once for the logits, plus the gathered rows); + the KV of the new token is *written*
     (B·T·kv_bytes_per_token); norms and biases are read.
   - compute: step time = max(bytes / bandwidth, FLOPs / peak FLOP/s) instead of bytes only,
     with FLOPs = 2·(matmul weights)·tokens + attention 4·N·H·(visible keys) per layer and
     token (causal in prefill; the logits only at the last prompt token).
   - weight and KV dtypes: bf16, fp32, int8 (per-output-channel float32 scales), int4
     (group-wise float32 scales, group 128) for the Linear kernels; embedding, norms and biases
     stay in the base dtype (they do not go through the `Linear` quantization seam).
     KV: bf16/fp32/fp8, or int8 with one float32 scale per (layer, token, KV head) for k and v.
   - the KV footprint counts whole pages (positions rounded up to the page size Z), one int32
     page-table entry per page and the row cache's `lengths` entry (4 bytes per sequence).

   Ignored by both: activations and logits traffic, softmax/RoPE/norm elementwise FLOPs,
   kernel launch and host overhead, communication between devices.

Per-op roofline (the lecture's intensity section): `matmul_op`, `mlp_op`, `attention_op` give
FLOPs, bytes and intensity; `OpCost.bound(hw)` says compute- or memory-bound against
`HardwareProfile.intensity`. Limits: the MLP's intensity -> B·T when B·T << D, F; attention's
is S·T/(S+T) (S/2 in prefill, < 1 in generation, independent of B).

MBU / MFU of a measured step: `utilization(cost, seconds, hw)`.

Room for later issues: `kv_values_per_token_per_layer` is the one place MLA's latent cache
(C + rope dims instead of 2·K·H) plugs in; `kv_positions_stored` / `kv_positions_read` are
where a ring-buffer sliding-window cache plugs in (this repo's pools store all S positions;
an ideal sliding-window kernel reads only the last W).

Dimension letters: B batch, T new tokens, S cached tokens, D, F, N, K, H, L, V as in config.py.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import numpy as np

from infer.config.model_config import ModelConfig
from infer.perf.hardware import HardwareProfile
from infer.kv.pool import DEFAULT_PAGE_SIZE
from pallas_kernels.matmul.formats import FORMATS as QUANT_FORMATS

# ----------------------------------------------------------------------------------------------
# Storage formats
# ----------------------------------------------------------------------------------------------

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "int8": 1}
LENGTHS_BYTES_PER_SEQ = 4  # the row cache's int32 `lengths` entry
PAGE_TABLE_ENTRY_BYTES = 4  # one int32 page-table entry per page a sequence owns


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    """How weights are stored. `bits` applies to Linear kernels; the rest use `base_dtype`.

    Quantized kernels (scale_bytes > 0) carry one scale per output channel (group_size None)
    or one per `group_size` input elements per output channel.
    """

    name: str
    bits: int
    base_dtype: str = "bfloat16"
    group_size: Optional[int] = None
    scale_bytes: int = 0

    def __post_init__(self):
        if self.bits not in (4, 8, 16, 32):
            raise ValueError(f"WeightFormat.bits: must be 4, 8, 16 or 32, got {self.bits}")
        if self.base_dtype not in DTYPE_BYTES:
            raise ValueError(f"WeightFormat.base_dtype: must be one of {sorted(DTYPE_BYTES)}, got {self.base_dtype!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size <= 0):
            raise ValueError(f"WeightFormat.group_size: must be a positive int or None, got {self.group_size!r}")
        if self.scale_bytes < 0:
            raise ValueError(f"WeightFormat.scale_bytes: must be >= 0, got {self.scale_bytes}")
        if self.bits < 16 and self.scale_bytes == 0:
            raise ValueError(f"WeightFormat.scale_bytes: a {self.bits}-bit format needs scales (> 0)")

    @property
    def base_bytes(self) -> int:
        return DTYPE_BYTES[self.base_dtype]

    def kernel_bytes(self, in_features: int, out_features: int) -> float:
        """Bytes of one [in, out] kernel including its scales."""
        data = in_features * out_features * self.bits / 8
        if self.scale_bytes == 0:
            return data
        groups = 1 if self.group_size is None else math.ceil(in_features / self.group_size)
        return data + groups * out_features * self.scale_bytes

    @classmethod
    def get(cls, fmt: Union[str, "WeightFormat", None], default: str = "bfloat16") -> "WeightFormat":
        """A preset by name: float32, bfloat16, float16, int8 (per-channel), int4 (group 128, a scale only), and
        every stored format of pallas_kernels/matmul/formats.py (int4-g32/64/128 with scale and min, q8_0, q4_0, q4_1)."""
        if isinstance(fmt, WeightFormat):
            return fmt
        name = fmt or default
        presets = {
            "float32": cls("float32", 32, "float32"),
            "bfloat16": cls("bfloat16", 16, "bfloat16"),
            "float16": cls("float16", 16, "float16"),
            "int8": cls("int8", 8, "bfloat16", None, 4),
            "int4": cls("int4", 4, "bfloat16", 128, 4),
        }
        for q in QUANT_FORMATS.values():  # the stored formats (pallas_kernels/matmul/formats.py), bytes as stored
            per_group = np.dtype(q.scale_dtype).itemsize * (2 if q.has_min else 1)
            presets.setdefault(q.name, cls(q.name, q.bits, "bfloat16", q.group, per_group))
        if name not in presets:
            raise ValueError(f"weight format: unknown {name!r}; known: {sorted(presets)}")
        return presets[name]


@dataclasses.dataclass(frozen=True)
class KVFormat:
    """How the KV cache is stored: bytes per value and scale bytes per (layer, token, KV head) for k and v."""

    name: str
    value_bytes: float
    scale_bytes: int = 0

    def __post_init__(self):
        if self.value_bytes <= 0:
            raise ValueError(f"KVFormat.value_bytes: must be > 0, got {self.value_bytes}")
        if self.scale_bytes < 0:
            raise ValueError(f"KVFormat.scale_bytes: must be >= 0, got {self.scale_bytes}")

    @classmethod
    def get(cls, fmt: Union[str, "KVFormat", None], default: str = "bfloat16") -> "KVFormat":
        if isinstance(fmt, KVFormat):
            return fmt
        name = fmt or default
        presets = {
            "float32": cls("float32", 4), "bfloat16": cls("bfloat16", 2), "float16": cls("float16", 2),
            "float8_e4m3fn": cls("float8_e4m3fn", 1), "int8": cls("int8", 1, 4),
        }
        if name not in presets:
            raise ValueError(f"kv format: unknown {name!r}; known: {sorted(presets)}")
        return presets[name]


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """One kind of parameter: `kind` is "linear" ([in, out] kernel x count), "embedding" or "vector"."""

    name: str
    kind: str
    count: int  # how many (e.g. L)
    in_features: int = 0
    out_features: int = 0
    size: int = 0  # elements per copy for embedding / vector

    @property
    def elements_each(self) -> int:
        return self.in_features * self.out_features if self.kind == "linear" else self.size

    @property
    def num_params(self) -> int:
        return self.count * self.elements_each

    def bytes(self, weights: WeightFormat) -> float:
        if self.kind == "linear":
            return self.count * weights.kernel_bytes(self.in_features, self.out_features)
        return self.num_params * weights.base_bytes


def param_groups(cfg: ModelConfig) -> list:
    """Every parameter of the model, grouped (same inventory as `infer.model.params.init_params`)."""
    D, F, N, K, H, L, V = (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                           cfg.n_layers, cfg.vocab_size)
    if cfg.is_mla:
        attn = mla_param_groups(cfg)
    else:
        attn = [ParamGroup("q", "linear", L, D, N * H),
                ParamGroup("k", "linear", cfg.kv_layers, D, K * H),  # CLA: one k/v projection per group
                ParamGroup("v", "linear", cfg.kv_layers, D, K * H),
                ParamGroup("o", "linear", L, N * H, D)]
    Lm = sum(cfg.is_moe_layer(i) for i in range(L))  # MoE layers; the other L - Lm keep the dense MLP
    g = [ParamGroup("embed", "embedding", 1, size=V * D),
         ParamGroup("attn_norm", "vector", L, size=D),
         *attn,
         ParamGroup("mlp_norm", "vector", L, size=D),
         ParamGroup("gate", "linear", L - Lm, D, F),
         ParamGroup("up", "linear", L - Lm, D, F),
         ParamGroup("down", "linear", L - Lm, F, D),
         ParamGroup("final_norm", "vector", 1, size=D)]
    if Lm:  # layers/moe.py: the router [D, E] and E experts [D, F'], [D, F'], [F', D] per MoE layer
        E, Fm = cfg.num_experts, cfg.moe_intermediate_size
        g += [ParamGroup("router", "linear", Lm, D, E), ParamGroup("expert_gate", "linear", Lm * E, D, Fm),
              ParamGroup("expert_up", "linear", Lm * E, D, Fm), ParamGroup("expert_down", "linear", Lm * E, Fm, D)]
    if cfg.qkv_bias:
        g.append(ParamGroup("q_bias", "vector", L, size=N * H))
        g.append(ParamGroup("kv_bias", "vector", cfg.kv_layers, size=2 * K * H))
    if cfg.qk_norm:
        g.append(ParamGroup("q_norm", "vector", L, size=H))
        g.append(ParamGroup("k_norm", "vector", cfg.kv_layers, size=H))
    if not cfg.tie_embeddings:
        g.append(ParamGroup("lm_head", "linear", 1, D, V))
    return g


def mla_param_groups(cfg: ModelConfig) -> list:
    """MLA's attention parameters (layers/attention/mla.py): query (optionally compressed), latent down-projection
    with its norm, the latent up-projection W_kvb and the output projection."""
    D, N, L = cfg.d_model, cfg.n_heads, cfg.n_layers
    h, E, C, u = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim
    if cfg.q_lora_rank is None:
        g = [ParamGroup("q", "linear", L, D, N * (h + E))]
    else:
        Q = cfg.q_lora_rank
        g = [ParamGroup("q_a", "linear", L, D, Q), ParamGroup("q_a_norm", "vector", L, size=Q),
             ParamGroup("q_b", "linear", L, Q, N * (h + E))]
    return g + [ParamGroup("kv_a", "linear", L, D, C + E), ParamGroup("kv_a_norm", "vector", L, size=C),
                ParamGroup("kv_b", "linear", L, C, N * (h + u)), ParamGroup("o", "linear", L, N * u, D)]


def num_params(cfg: ModelConfig) -> int:
    """Exact parameter count (equals the number of elements of `init_params(cfg, key)`)."""
    return sum(p.num_params for p in param_groups(cfg))


def param_bytes(cfg: ModelConfig, weights: Union[str, WeightFormat, None] = None) -> float:
    """Bytes of all parameters in a weight format (default: the config's dtype)."""
    w = WeightFormat.get(weights, cfg.weight_format or cfg.dtype)
    return sum(p.bytes(w) for p in param_groups(cfg))


def _block_matmul_elements(cfg: ModelConfig) -> int:
    """Elements of the matmul weights of all blocks one token multiplies (q, k, v, o, gate, up, down) x L: of an
    MoE layer, the router and the k experts it picks (k/E of the experts)."""
    frac = lambda p: cfg.num_experts_per_tok / cfg.num_experts if p.name.startswith("expert_") else 1
    return round(sum(p.num_params * frac(p) for p in param_groups(cfg) if p.kind == "linear" and p.name != "lm_head"))


def active_params(cfg: ModelConfig) -> int:
    """Parameters one token uses: num_params with each MoE layer's experts counted k/E (the router in full);
    equals num_params for a dense model (MoE models' "A3B", "37B active")."""
    frac = lambda p: cfg.num_experts_per_tok / cfg.num_experts if p.name.startswith("expert_") else 1
    return round(sum(p.num_params * frac(p) for p in param_groups(cfg)))


def experts_touched(cfg: ModelConfig, tokens: int, routing=None) -> float:
    """Expected distinct experts a step of `tokens` tokens reads per MoE layer. Uniform routing (routing None):
    each token picks a uniformly random k-subset of the E, so an expert is missed by all with probability
    (1 - k/E)^tokens: E (1 - (1 - k/E)^tokens). A measured routing: `routing` [E] the probability each expert is
    among a token's k (summing to k), tokens independent: sum_e 1 - (1 - p_e)^tokens."""
    if not cfg.is_moe:
        return 0.0
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    p = np.full(E, k / E) if routing is None else np.asarray(routing, np.float64)
    if p.shape != (E,) or (p < 0).any() or (p > 1).any() or abs(p.sum() - k) > 1e-6 * k:
        raise ValueError(f"routing: expected [{E}] probabilities in [0, 1] summing to k={k}, got {p}")
    return float(np.sum(1.0 - (1.0 - p) ** tokens))


# ----------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------


def kv_values_per_token_per_layer(cfg: ModelConfig) -> int:
    """Cached values per token per cached layer: 2·K·H (key + value); MLA: C + E (the latent and the RoPE key)."""
    if cfg.is_mla:
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.n_kv_heads * cfg.head_dim


def kv_bytes_per_token(cfg: ModelConfig, kv: Union[str, KVFormat, None] = None) -> float:
    """Bytes one token adds to the cache over all layers (including int8 scales). Under CLA only
    n_layers / kv_share_every layers are cached."""
    f = KVFormat.get(kv, cfg.kv_cache_dtype or cfg.dtype)
    scales = 0 if cfg.is_mla else 2 * cfg.n_kv_heads * f.scale_bytes
    per_layer = kv_values_per_token_per_layer(cfg) * f.value_bytes + scales
    return cfg.kv_layers * per_layer


def kv_positions_stored(cfg: ModelConfig, seq_len: int, page_size: int = DEFAULT_PAGE_SIZE) -> int:
    """Positions the cache holds for a sequence of `seq_len` tokens: all of them, rounded up to whole pages."""
    return -(-seq_len // page_size) * page_size


def kv_positions_read(cfg: ModelConfig, seq_len: int) -> int:
    """Cached positions an ideal attention kernel reads at context `seq_len` (sliding window: the last W)."""
    if cfg.sliding_window is not None:
        return min(seq_len, cfg.sliding_window)
    return seq_len


def kv_bytes_per_sequence(cfg: ModelConfig, seq_len: int, kv: Union[str, KVFormat, None] = None,
                          page_size: int = DEFAULT_PAGE_SIZE) -> float:
    """Pages (k, v, scales) of one sequence, its page-table entries and its length."""
    stored = kv_positions_stored(cfg, seq_len, page_size)
    return stored * kv_bytes_per_token(cfg, kv) + (stored // page_size) * PAGE_TABLE_ENTRY_BYTES + LENGTHS_BYTES_PER_SEQ


def kv_cache_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, kv: Union[str, KVFormat, None] = None) -> float:
    """Bytes of `infer.init_cache(cfg, batch_size, seq_len)` (page pools with scales, page table, lengths)."""
    return batch_size * kv_bytes_per_sequence(cfg, seq_len, kv)


def memory_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, weights=None, kv=None) -> float:
    """Weights + KV cache for `batch_size` sequences of `seq_len` tokens (activations not counted)."""
    return param_bytes(cfg, weights) + kv_cache_bytes(cfg, batch_size, seq_len, kv)


def max_batch_size(cfg: ModelConfig, hw: HardwareProfile, seq_len: int, weights=None, kv=None,
                   memory_fraction: float = 1.0) -> int:
    """Largest B whose weights + KV cache of `seq_len` tokens fit `memory_fraction` of the device (0 if none)."""
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction: must be in (0, 1], got {memory_fraction}")
    free = hw.memory_bytes * memory_fraction - param_bytes(cfg, weights)
    if free <= 0:
        return 0
    return int(free // kv_bytes_per_sequence(cfg, seq_len, kv))


# ----------------------------------------------------------------------------------------------
# Per-op arithmetic intensity (the lecture's section)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OpCost:
    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes

    def bound(self, hw: HardwareProfile) -> str:
        """'compute' iff the op's intensity exceeds the accelerator's, else 'memory'."""
        return "compute" if self.intensity > hw.intensity else "memory"

    def time(self, hw: HardwareProfile) -> float:
        return max(self.bytes / hw.memory_bandwidth, self.flops / hw.peak_flops_bf16)


def matmul_op(B: int, D: int, F: int, dtype_bytes: float = 2) -> OpCost:
    """X[B, D] @ W[D, F]: 2BDF FLOPs; read X and W, write Y."""
    return OpCost(2 * B * D * F, dtype_bytes * (B * D + D * F + B * F))


def mlp_op(B: int, T: int, D: int, F: int, dtype_bytes: float = 2) -> OpCost:
    """SwiGLU MLP (gate, up, down): 6BTDF FLOPs; bytes 4BTD + 4BTF + 6DF in bf16."""
    return OpCost(6 * B * T * D * F, dtype_bytes * (2 * B * T * D + 2 * B * T * F + 3 * D * F))


def attention_op(B: int, S: int, T: int, N: int, H: int, K: Optional[int] = None, dtype_bytes: float = 2) -> OpCost:
    """FlashAttention-style attention of T queries over S keys, one layer.

    FLOPs 4·B·S·T·N·H (QK^T and PV); bytes: read Q and write O (2·B·T·N·H values), read K and V
    (2·B·S·K·H values). With K = N and D = N·H this is the lecture's 4BSTD / (4BSD + 4BTD).
    """
    K = N if K is None else K
    return OpCost(4 * B * S * T * N * H, dtype_bytes * (2 * B * T * N * H + 2 * B * S * K * H))


def mlp_cost(cfg: ModelConfig, batch_size: int, tokens: int, dtype_bytes: float = 2) -> OpCost:
    return mlp_op(batch_size, tokens, cfg.d_model, cfg.d_ff, dtype_bytes)


def attention_cost(cfg: ModelConfig, batch_size: int, context: int, tokens: int, dtype_bytes: float = 2) -> OpCost:
    return attention_op(batch_size, context, tokens, cfg.n_heads, cfg.head_dim, cfg.n_kv_heads, dtype_bytes)


# ----------------------------------------------------------------------------------------------
# Whole-step cost and prediction (the refined model)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepCost:
    """FLOPs and bytes of one model step processing `tokens` new tokens per row after `context` cached ones."""

    batch_size: int
    tokens: int
    context: int
    flops: float
    weight_bytes: float  # parameters read (embedding rows gathered, not the table)
    kv_read_bytes: float
    kv_write_bytes: float

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    def memory_time(self, hw: HardwareProfile) -> float:
        return self.bytes / hw.memory_bandwidth

    def compute_time(self, hw: HardwareProfile) -> float:
        return self.flops / hw.peak_flops_bf16

    def time(self, hw: HardwareProfile) -> float:
        return max(self.memory_time(hw), self.compute_time(hw))

    def bound(self, hw: HardwareProfile) -> str:
        return "compute" if self.compute_time(hw) > self.memory_time(hw) else "memory"


def _attention_keys(cfg: ModelConfig, context: int, tokens: int) -> int:
    """Sum over the new tokens of the keys each sees (causal; sliding window caps it at W)."""
    if cfg.sliding_window is None:
        return tokens * context + tokens * (tokens + 1) // 2
    W = cfg.sliding_window
    return sum(min(context + i + 1, W) for i in range(tokens))


def attention_flops_per_key(cfg: ModelConfig, tokens: int = 1) -> int:
    """FLOPs of one (query token, visible key) pair over all heads of one layer: 4·N·H (q.k and p·v).
    MLA decode (tokens == 1, the absorbed path) scores against the latent: 2·N·(C + E) + 2·N·C; multi-token MLA
    steps expand keys and values: 2·N·(h + E) + 2·N·u (the expansion's own matmuls are not counted)."""
    if cfg.is_mla:
        if tokens == 1:
            return 2 * cfg.n_heads * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + 2 * cfg.n_heads * cfg.kv_lora_rank
        return 2 * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) + 2 * cfg.n_heads * cfg.v_head_dim
    return 4 * cfg.n_heads * cfg.head_dim


def step_cost(cfg: ModelConfig, batch_size: int, tokens: int, context: int, weights=None, kv=None,
              logits_per_row: Optional[int] = None) -> StepCost:
    """Cost of one forward step over [B, T] new tokens after `context` cached tokens per row.

    `logits_per_row` is how many positions get logits (decode: T; prefill: 1, the last token).
    """
    if batch_size <= 0 or tokens <= 0 or context < 0:
        raise ValueError(f"step_cost: need batch_size > 0, tokens > 0, context >= 0; got "
                         f"{batch_size}, {tokens}, {context}")
    w = WeightFormat.get(weights, cfg.weight_format or cfg.dtype)
    B, T, D, V = batch_size, tokens, cfg.d_model, cfg.vocab_size
    logits_per_row = T if logits_per_row is None else logits_per_row
    groups = param_groups(cfg)
    # Weights: every block matrix, norm and bias once; the embedding only as gathered rows; of the experts only those
    # the step's B·T tokens touch (expected, uniform routing).
    touched = experts_touched(cfg, B * T) / cfg.num_experts if cfg.is_moe else 1.0
    weight_bytes = sum(p.bytes(w) * (touched if p.name.startswith("expert_") else 1)
                       for p in groups if p.kind != "embedding")
    weight_bytes += B * T * D * w.base_bytes  # gathered embedding rows
    if cfg.tie_embeddings:
        weight_bytes += V * D * w.base_bytes  # the shared table, read as the lm_head
    kv_tok = kv_bytes_per_token(cfg, kv)
    kv_read = B * kv_positions_read(cfg, context) * kv_tok
    kv_write = B * T * kv_tok
    flops = 2 * B * T * _block_matmul_elements(cfg)
    flops += 2 * B * logits_per_row * D * V
    flops += cfg.n_layers * B * _attention_keys(cfg, context, T) * attention_flops_per_key(cfg, T)
    return StepCost(B, T, context, float(flops), float(weight_bytes), float(kv_read), float(kv_write))


def decode_cost(cfg: ModelConfig, batch_size: int, context: int, weights=None, kv=None) -> StepCost:
    """One decode step: B new tokens, each after `context` cached tokens."""
    return step_cost(cfg, batch_size, 1, context, weights, kv)


def prefill_cost(cfg: ModelConfig, batch_size: int, prompt_len: int, weights=None, kv=None) -> StepCost:
    """Prefill of B prompts of `prompt_len` tokens into an empty cache; logits at the last token."""
    return step_cost(cfg, batch_size, prompt_len, 0, weights, kv, logits_per_row=1)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A step's cost evaluated on a device."""

    cost: StepCost
    memory_time: float
    compute_time: float
    time: float  # max of the two
    bound: str
    tokens_per_s: float  # new tokens per second over the batch (decode throughput)


def predict(cost: StepCost, hw: HardwareProfile) -> Prediction:
    t = cost.time(hw)
    return Prediction(cost, cost.memory_time(hw), cost.compute_time(hw), t, cost.bound(hw),
                      cost.batch_size * cost.tokens / t)


def predict_decode(cfg: ModelConfig, hw: HardwareProfile, batch_size: int, context: int, weights=None,
                   kv=None) -> Prediction:
    """Predicted decode step: time = per-token latency, tokens_per_s = throughput."""
    return predict(decode_cost(cfg, batch_size, context, weights, kv), hw)


def predict_prefill(cfg: ModelConfig, hw: HardwareProfile, batch_size: int, prompt_len: int, weights=None,
                    kv=None) -> Prediction:
    """Predicted prefill: time is the TTFT lower bound (compute-bound for long prompts)."""
    return predict(prefill_cost(cfg, batch_size, prompt_len, weights, kv), hw)


# ----------------------------------------------------------------------------------------------
# Utilisation of a measured step
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Utilization:
    achieved_bandwidth: float  # bytes/s
    achieved_flops: float  # FLOP/s
    mbu: float  # achieved_bandwidth / hw.memory_bandwidth
    mfu: float  # achieved_flops / hw.peak_flops_bf16


def utilization(cost: StepCost, seconds: float, hw: HardwareProfile) -> Utilization:
    """MBU and MFU of a step that took `seconds`: the fraction of peak bandwidth / FLOP/s it achieved."""
    if seconds <= 0:
        raise ValueError(f"seconds: must be > 0, got {seconds}")
    bw = cost.bytes / seconds
    fl = cost.flops / seconds
    return Utilization(bw, fl, bw / hw.memory_bandwidth, fl / hw.peak_flops_bf16)


# ----------------------------------------------------------------------------------------------
# The lecture's exact model
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LectureStats:
    num_params: int
    param_bytes: int
    kv_bytes_per_seq: int
    memory: int  # bytes
    latency: float  # seconds per step
    throughput: float  # tokens/s


def lecture_num_params(cfg: ModelConfig) -> int:
    """2VD + 3DFL + (2DNH + 2DKH)L."""
    V, D, F, N, K, H, L = (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                           cfg.n_layers)
    return 2 * V * D + 3 * D * F * L + (2 * D * N * H + 2 * D * K * H) * L


def lecture_stats(cfg: ModelConfig, batch_size: int, seq_len: int,
                  bandwidth: Union[float, HardwareProfile]) -> LectureStats:
    """The lecture's model, exactly (bf16 everything; latency = memory / bandwidth)."""
    bw = bandwidth.memory_bandwidth if isinstance(bandwidth, HardwareProfile) else float(bandwidth)
    if batch_size <= 0 or seq_len <= 0 or bw <= 0:
        raise ValueError(f"lecture_stats: need batch_size, seq_len, bandwidth > 0; got {batch_size}, {seq_len}, {bw}")
    params = lecture_num_params(cfg)
    kv_seq = seq_len * cfg.n_kv_heads * cfg.head_dim * cfg.n_layers * 2 * 2
    memory = batch_size * kv_seq + 2 * params
    latency = memory / bw
    return LectureStats(params, 2 * params, kv_seq, memory, latency, batch_size / latency)
