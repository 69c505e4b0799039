"""Model configuration: a frozen, hashable dataclass that validates itself.

`ModelConfig` is a valid static argument to `jax.jit` (it is hashable and
compared by value). YAML files in `configs/models/` only name values; every
rule about what is valid lives here.

Dimension letters (lecture convention, used everywhere in this repo):
B batch, T tokens now, S cache length, D d_model, F d_ff, N query heads,
K kv heads, G = N/K, H head dim, L layers, V vocab.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import yaml
from infer.config.dtypes import DTYPES, KV_CACHE_DTYPES, dtype_name
from infer.config.paths import REPO_ROOT
from pallas_kernels.attention import impl_names as attention_impl_names
from pallas_kernels.matmul.formats import FORMATS as QUANT_FORMATS

MODEL_CONFIG_DIR = os.path.join(REPO_ROOT, "configs", "models")

ROPE_SCALING_TYPES = ("llama3", "linear", "yarn")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{field}: {msg}")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-frequency scaling. `type` is "llama3", "linear" or "yarn".

    llama3: frequencies with wavelength above original_max_position_embeddings /
    low_freq_factor are divided by `factor`, those below
    original_max_position_embeddings / high_freq_factor are kept, and the band in
    between is interpolated (Llama 3.1 recipe).
    linear: positions are divided by `factor` (all frequencies divided by factor).
    """

    type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # YaRN (DeepSeek-V2/V3): frequencies blended between extrapolation and interpolation by a linear ramp over
    # the dimensions whose rotations during pretraining fall between beta_slow and beta_fast; cos/sin are scaled
    # by attention_factor (default mscale(factor, mscale) / mscale(factor, mscale_all_dim), or mscale(factor)),
    # and MLA's softmax scale by mscale(factor, mscale_all_dim)^2 when mscale_all_dim is set.
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    attention_factor: Optional[float] = None
    truncate: bool = True

    def __post_init__(self):
        _require(self.type in ROPE_SCALING_TYPES, "rope_scaling.type",
                 f"unsupported rope scaling type {self.type!r}; supported: {ROPE_SCALING_TYPES}")
        _require(self.factor > 0, "rope_scaling.factor", f"must be > 0, got {self.factor}")
        if self.type == "yarn":
            _require(self.original_max_position_embeddings > 0,
                     "rope_scaling.original_max_position_embeddings", "must be > 0")
            _require(self.beta_fast > self.beta_slow > 0, "rope_scaling.beta_fast",
                     f"must be greater than beta_slow > 0, got {self.beta_fast} and {self.beta_slow}")
        if self.type == "llama3":
            _require(self.high_freq_factor > self.low_freq_factor, "rope_scaling.high_freq_factor",
                     "must be greater than low_freq_factor")
            _require(self.original_max_position_embeddings > 0,
                     "rope_scaling.original_max_position_embeddings", "must be > 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder.

    The first seven fields have no default. Everything is validated at
    construction; errors name the offending field.
    """

    vocab_size: int  # V
    d_model: int  # D
    n_layers: int  # L
    n_heads: int  # N
    n_kv_heads: int  # K
    head_dim: int  # H
    d_ff: int  # F
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 4096
    dtype: str = "bfloat16"
    # Architecture switches used by real checkpoints.
    qkv_bias: bool = False  # Qwen2: biases on q, k, v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over H on q and k before RoPE
    sliding_window: Optional[int] = None  # every layer attends to the last W keys
    attn_logit_softcap: Optional[float] = None  # softcap * tanh(logits / softcap)
    # Which attention implementation the cached step uses: any name registered in layers.attention.registry
    # (the names: pallas_kernels/attention/impl_names.py);
    # "auto" = the Pallas kernels on GPU/TPU, the pure-JAX reference on CPU.
    attention_impl: str = "auto"
    # How the projection weights are stored: None = dtype; else a format of pallas_kernels/matmul/formats.py
    # ("int8", "int4-g32|64|128", "q8_0", "q4_0", "q4_1"). Embeddings, norms and the LM head stay in dtype.
    weight_format: Optional[str] = None
    # The KV page pools' dtype: None = dtype; "int8" stores int8 values with a float32 scale per token and head.
    kv_cache_dtype: Optional[str] = None
    # MLA (DeepSeek-V2/V3 multi-head latent attention), on when kv_lora_rank is set: the cache holds one latent
    # of C = kv_lora_rank values plus one RoPE key of E = qk_rope_head_dim values per token and layer. Queries
    # are optionally compressed to q_lora_rank first. head_dim must equal qk_nope_head_dim + qk_rope_head_dim
    # (the query/key width), n_kv_heads must equal n_heads (every head expands its own key and value).
    kv_lora_rank: Optional[int] = None
    q_lora_rank: Optional[int] = None
    qk_nope_head_dim: Optional[int] = None
    qk_rope_head_dim: Optional[int] = None
    v_head_dim: Optional[int] = None
    # CLA (cross-layer attention): each group of kv_share_every adjacent layers reads the keys and values of the
    # group's first layer, so the pools hold n_layers / kv_share_every layers.
    kv_share_every: int = 1
    # EAGLE-style draft (infer/generation/eagle.py): each position's input is fuse([a target's final feature;
    # the token's embedding]) (a [2D, D] projection + bias) instead of the embedding alone; callers pass the features.
    feature_input: bool = False
    # How the blocks' parameters are laid out and run: True = stacked on a leading L axis under one scan (compile
    # time flat in depth; the default, what loaders, quantization and parallelism produce); False = one subtree per
    # block ("layers_0", ...) run by an unrolled loop. XLA's CPU backend copies each layer's weight slice out of a
    # stacked array before every dot, so on CPU the unrolled layout decodes faster (BENCHMARKS.md, "This stack
    # vs llama.cpp"); infer.model.layout converts between the two.
    scan_layers: bool = True
    # Projections that read the same input as one matrix: q|k|v as "qkv" [D, N + 2K, H] and gate|up as "gate_up"
    # [D, 2F], one GEMM each instead of three and two (infer.model.layout.fuse_projections; the decode layouts use
    # it). Not for MLA; a CLA follower block keeps its lone "q".
    fused_projections: bool = False
    # Mixture of experts (layers/moe.py), on when num_experts > 0: the MLP of each MoE layer is num_experts SwiGLU
    # experts of width moe_intermediate_size, each token summing the num_experts_per_tok its router picks (softmax
    # top-k, renormalised over the k when norm_topk_prob). moe_layers: the MoE layers' indices, None = every layer;
    # the others keep the dense d_ff MLP (Qwen3-MoE's decoder_sparse_step / mlp_only_layers). A mix of dense and MoE
    # layers has no stacked layout (the blocks differ), so it needs scan_layers=False.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: Optional[int] = None
    norm_topk_prob: bool = True
    moe_layers: Optional[tuple] = None
    name: str = ""

    def __post_init__(self):
        for f in ("dtype", "kv_cache_dtype"):  # jnp.bfloat16 and "bfloat16" alike; the field keeps the name
            object.__setattr__(self, f, dtype_name(getattr(self, f)))
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                  "max_seq_len"):
            v = getattr(self, f)
            _require(isinstance(v, int) and not isinstance(v, bool), f, f"must be an int, got {v!r}")
            _require(v > 0, f, f"must be > 0, got {v}")
        _require(self.n_heads % self.n_kv_heads == 0, "n_heads",
                 f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        _require(self.head_dim % 2 == 0, "head_dim", f"must be even for rotary embeddings, got {self.head_dim}")
        _require(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}")
        _require(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")
        _require(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        _require(self.attention_impl in attention_impl_names.names(), "attention_impl",
                 f"must be a registered implementation {attention_impl_names.names()}, got {self.attention_impl!r}")
        _require(self.kv_cache_dtype is None or self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype",
                 f"must be None or one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        _require(self.weight_format is None or self.weight_format in QUANT_FORMATS, "weight_format",
                 f"must be None or one of {sorted(QUANT_FORMATS)}, got {self.weight_format!r}")
        if self.rope_scaling is not None:
            _require(isinstance(self.rope_scaling, RopeScaling), "rope_scaling",
                     f"must be a RopeScaling, got {type(self.rope_scaling).__name__}")
        if self.sliding_window is not None:
            _require(isinstance(self.sliding_window, int) and self.sliding_window > 0, "sliding_window",
                     f"must be a positive int or None, got {self.sliding_window!r}")
        if self.attn_logit_softcap is not None:
            _require(self.attn_logit_softcap > 0, "attn_logit_softcap",
                     f"must be > 0 or None, got {self.attn_logit_softcap}")
        self._validate_mla()
        _require(isinstance(self.kv_share_every, int) and self.kv_share_every >= 1, "kv_share_every",
                 f"must be an int >= 1, got {self.kv_share_every!r}")
        _require(not (self.fused_projections and self.is_mla), "fused_projections",
                 "MLA's projections (a low-rank latent) have no q|k|v to fuse")
        _require(self.n_layers % self.kv_share_every == 0, "kv_share_every",
                 f"n_layers={self.n_layers} is not divisible by kv_share_every={self.kv_share_every}")
        _require(self.kv_share_every == 1 or not self.is_mla, "kv_share_every",
                 "cross-layer sharing is not supported together with MLA")
        _require(self.kv_share_every == 1 or self.weight_format is None, "kv_share_every",
                 "cross-layer sharing is not supported together with quantized weights (weight_format)")
        _require(isinstance(self.feature_input, bool), "feature_input",
                 f"must be true or false, got {self.feature_input!r}")
        self._validate_moe()

    def _validate_moe(self) -> None:
        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
        _require(is_int(self.num_experts) and self.num_experts >= 0, "num_experts",
                 f"must be an int >= 0 (0: dense MLPs), got {self.num_experts!r}")
        _require(isinstance(self.norm_topk_prob, bool), "norm_topk_prob",
                 f"must be true or false, got {self.norm_topk_prob!r}")
        if self.num_experts == 0:
            for f, unset in (("num_experts_per_tok", self.num_experts_per_tok == 0),
                             ("moe_intermediate_size", self.moe_intermediate_size is None),
                             ("moe_layers", self.moe_layers is None)):
                _require(unset, f, "is a mixture-of-experts field: set num_experts too (or leave it unset)")
            return
        _require(is_int(self.num_experts_per_tok) and 1 <= self.num_experts_per_tok <= self.num_experts,
                 "num_experts_per_tok", f"must be an int in [1, num_experts={self.num_experts}], "
                                        f"got {self.num_experts_per_tok!r}")
        _require(is_int(self.moe_intermediate_size) and self.moe_intermediate_size > 0, "moe_intermediate_size",
                 f"must be an int > 0 with num_experts set, got {self.moe_intermediate_size!r}")
        if self.moe_layers is not None:
            layers = self.moe_layers
            _require(isinstance(layers, (list, tuple)) and all(is_int(i) for i in layers), "moe_layers",
                     f"must be a list of layer indices or None (every layer), got {layers!r}")
            _require(list(layers) == sorted(set(layers)) and all(0 <= i < self.n_layers for i in layers),
                     "moe_layers", f"must be increasing indices in [0, n_layers={self.n_layers}), got {list(layers)}")
            # canonical: a tuple (hashable), None when every layer is MoE, so equal models compare equal
            object.__setattr__(self, "moe_layers", None if len(layers) == self.n_layers else tuple(layers))
        _require(not self.scan_layers or self.moe_layers is None, "scan_layers",
                 f"a mix of dense and MoE layers (moe_layers={list(self.moe_layers or ())} of {self.n_layers}) "
                 f"has no stacked layout: set scan_layers=False")
        for f, bad in (("weight_format", self.weight_format is not None),
                       ("kv_share_every", self.kv_share_every != 1),
                       ("feature_input", self.feature_input)):
            _require(not bad, f, "is not supported together with mixture-of-experts layers (num_experts > 0)")

    def _validate_mla(self) -> None:
        mla_fields = ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank is None:
            for f in mla_fields:
                _require(getattr(self, f) is None, f, "is an MLA field: set kv_lora_rank too (or leave it None)")
            return
        for f in ("kv_lora_rank",) + mla_fields:
            v = getattr(self, f)
            if f == "q_lora_rank" and v is None:
                continue
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f, f"must be an int > 0, got {v!r}")
        _require(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
                 f"must be even for rotary embeddings, got {self.qk_rope_head_dim}")
        _require(self.head_dim == self.qk_nope_head_dim + self.qk_rope_head_dim, "head_dim",
                 f"with MLA must equal qk_nope_head_dim + qk_rope_head_dim = "
                 f"{self.qk_nope_head_dim + self.qk_rope_head_dim}, got {self.head_dim}")
        _require(self.n_kv_heads == self.n_heads, "n_kv_heads",
                 f"with MLA must equal n_heads={self.n_heads} (each head expands its own key), got {self.n_kv_heads}")
        for f, bad in (("qkv_bias", self.qkv_bias), ("qk_norm", self.qk_norm),
                       ("sliding_window", self.sliding_window is not None),
                       ("attn_logit_softcap", self.attn_logit_softcap is not None),
                       ("weight_format", self.weight_format is not None),
                       ("kv_cache_dtype", self.kv_cache_dtype == "int8")):
            _require(not bad, f, "is not supported together with MLA")

    # Derived quantities -----------------------------------------------------
    @property
    def q_per_kv(self) -> int:
        """G = N / K query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (kv_lora_rank set)."""
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        """Some layers' MLPs are mixtures of experts (num_experts > 0)."""
        return self.num_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        """Whether block i's MLP is the mixture of experts (else the dense d_ff SwiGLU)."""
        return self.is_moe and (self.moe_layers is None or i in self.moe_layers)

    @property
    def kv_layers(self) -> int:
        """Layers the page pools hold: n_layers / kv_share_every (CLA shares one per group)."""
        return self.n_layers // self.kv_share_every

    @property
    def jnp_dtype(self):
        import jax.numpy as jnp
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown ModelConfig field (known: {sorted(known)})")
        rs = d.get("rope_scaling")
        if isinstance(rs, dict):
            rs_known = {f.name for f in dataclasses.fields(RopeScaling)}
            bad = sorted(set(rs) - rs_known)
            if bad:
                raise ConfigError(f"rope_scaling.{bad[0]}: unknown field (known: {sorted(rs_known)})")
            d["rope_scaling"] = RopeScaling(**rs)
        for f in ("rope_theta", "norm_eps"):
            if f in d and isinstance(d[f], (int, str)) and not isinstance(d[f], bool):
                d[f] = float(d[f])
        return cls(**d)


def load_config(name_or_path: str, **overrides: Any) -> ModelConfig:
    """Load a ModelConfig from `configs/models/<name>.yaml` or from a YAML path.

    Keyword overrides replace fields after loading (e.g. dtype="float32").
    """
    path = name_or_path
    if not os.path.exists(path):
        path = os.path.join(MODEL_CONFIG_DIR, f"{name_or_path}.yaml")
    if not os.path.exists(path):
        available = sorted(f[:-5] for f in os.listdir(MODEL_CONFIG_DIR) if f.endswith(".yaml"))
        raise FileNotFoundError(f"no model config {name_or_path!r}: not a file and not one of {available}")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of field names to values")
    d.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    d.update(overrides)
    return ModelConfig.from_dict(d)
