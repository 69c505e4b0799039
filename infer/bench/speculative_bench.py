"""Experiment `kind: speculative_bench`: speculative generate vs plain generate, k = 1..8.

Spec fields (configs/experiments/speculative_bench.yaml)::

    target_model: small            # configs/models name or YAML path (random weights unless a checkpoint)
    target_overrides: {}           # ModelConfig fields to replace
    dtype: null                    # optional dtype override for both models
    draft_layers: 1                # draft = the target's first N layers (same embedding/head), or ...
    draft_model: null              # ... a separate config (random weights unless draft_checkpoint)
    draft_overrides: {}
    target_checkpoint: null        # optional infer.save_checkpoint directories (a trained pair),
    draft_checkpoint: null         # cast to `dtype` when given
    prompt_text: null              # optional text file: prompts are its consecutive token windows
    tokenizer_dir: null            # directory holding the tokenizer.json for prompt_text
    ks: [1, 2, 3, 4, 5, 6, 7, 8]
    batch_size: 4
    prompt_len: 32                 # longest prompt; the others are shorter (mixed lengths)
    max_new_tokens: 64
    temperature: 0.0               # sampling settings, applied to draft and target alike
    top_k: 0
    top_p: 1.0
    warmup: 1                      # calls discarded per configuration (compilation)
    repeats: 3                     # calls kept; medians over them
    seed: 0

Rows: one `plain` row (infer.generation.batch on the target) and one row per k.
- tok_s: generated tokens (all rows) / (TTFT + decode loop), median over repeats; both
  programs are device-synchronised (the result is read back to the host).
- speedup: tok_s / plain tok_s.
- accept_rate = mean accepted drafts per target pass / k; mean_accepted (0..k);
  tok_per_pass = tokens emitted per target verify pass per row (mean_accepted + 1 unless a
  stop or max_new_tokens cut the round short); accept_by_pos = P(draft i accepted), i = 0..k-1
  (definitions: infer/generation/speculative.py).
- greedy_match: at temperature 0, whether the speculative tokens equal plain generate's
  (a correctness check on every run; in float32 they must. In bf16 the k+1-token verify pass and
  the 1-token decode step round differently, so a near-tie argmax can legitimately flip and
  the two greedy outputs diverge from there); null otherwise.
With random weights the draft rarely agrees with the target, so acceptance (and any speedup)
is low; name a trained target/draft pair with the checkpoint fields for meaningful numbers.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Optional, Tuple

import jax
import numpy as np

from infer.bench.experiment import parse_spec, positive_ints, require
from infer.io.checkpoint import load_model_dir
from infer.io.tokenizer import load_tokenizer
from infer.config.model_config import load_config
from infer.generation.batch import generate
from infer.model.params import count_params, init_params
from infer.config import SamplingParams
from infer.generation.speculative import speculative_generate, truncated_draft

MARKDOWN_COLUMNS = ("target", "draft", "B", "k", "tok_s", "speedup", "accept_rate", "tok_per_pass", "accept_by_pos",
                    "ttft_ms", "decode_ms", "greedy_match")


@dataclasses.dataclass(frozen=True)
class SpeculativeBenchSpec:
    target_model: str
    ks: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    target_overrides: Optional[dict] = None
    dtype: Optional[str] = None
    draft_layers: Optional[int] = None
    draft_model: Optional[str] = None
    draft_overrides: Optional[dict] = None
    target_checkpoint: Optional[str] = None
    draft_checkpoint: Optional[str] = None
    prompt_text: Optional[str] = None
    tokenizer_dir: Optional[str] = None
    batch_size: int = 4
    prompt_len: int = 32
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    name: str = "speculative_bench"

    def __post_init__(self):
        positive_ints(self.ks, f"{self.name}.ks")
        n_draft = sum(x is not None for x in (self.draft_layers, self.draft_model, self.draft_checkpoint))
        require(n_draft == 1, f"{self.name}.draft_layers",
                "name exactly one draft: draft_layers, draft_model or draft_checkpoint")
        for f in ("batch_size", "prompt_len", "max_new_tokens", "repeats"):
            require(getattr(self, f) >= 1, f"{self.name}.{f}", f"must be >= 1, got {getattr(self, f)}")
        require(self.warmup >= 0, f"{self.name}.warmup", f"must be >= 0, got {self.warmup}")
        require((self.prompt_text is None) == (self.tokenizer_dir is None), f"{self.name}.prompt_text",
                "prompt_text and tokenizer_dir go together")


def _models(s: SpeculativeBenchSpec):
    over = dict(s.target_overrides or {})
    if s.dtype:
        over["dtype"] = s.dtype
    if s.target_checkpoint:
        tcfg, tparams = load_model_dir(s.target_checkpoint, dtype=s.dtype)
    else:
        tcfg = load_config(s.target_model, **over)
        tparams = init_params(tcfg, jax.random.PRNGKey(s.seed))
    if s.draft_layers is not None:
        dparams, dcfg = truncated_draft(tparams, tcfg, s.draft_layers)
    elif s.draft_checkpoint:
        dcfg, dparams = load_model_dir(s.draft_checkpoint, dtype=s.dtype)
    else:
        dover = dict(s.draft_overrides or {})
        if s.dtype:
            dover["dtype"] = s.dtype
        dcfg = load_config(s.draft_model, **dover)
        dparams = init_params(dcfg, jax.random.PRNGKey(s.seed + 1))
    return tcfg, tparams, dcfg, dparams


def _prompts(s: SpeculativeBenchSpec, vocab: int):
    """batch_size prompts of mixed lengths (prompt_len down to about half): random ids, or windows of prompt_text."""
    step = max(1, s.prompt_len // (2 * s.batch_size))
    lens = [max(1, s.prompt_len - i * step) for i in range(s.batch_size)]
    if s.prompt_text is None:
        rng = np.random.RandomState(s.seed)
        return [rng.randint(0, vocab, n).tolist() for n in lens]
    with open(s.prompt_text, encoding="utf-8") as f:
        ids = load_tokenizer(s.tokenizer_dir, vocab_size=vocab).encode(f.read())
    if len(ids) < s.prompt_len * s.batch_size:
        raise ValueError(f"{s.name}.prompt_text: {s.prompt_text} has {len(ids)} tokens, need "
                         f"{s.prompt_len * s.batch_size} for {s.batch_size} prompts of {s.prompt_len}")
    return [ids[i * s.prompt_len:i * s.prompt_len + n] for i, n in enumerate(lens)]


def _measure(fn, warmup: int, repeats: int):
    for _ in range(warmup):
        fn()
    results = [fn() for _ in range(repeats)]
    total = [r.ttft_s + r.decode_s for r in results]
    i = int(np.argsort(total)[len(total) // 2])  # the median run (its metrics are reported)
    return results[i], {"tok_s": results[i].num_generated / total[i], "ttft_ms": 1e3 * results[i].ttft_s,
                        "decode_ms": 1e3 * results[i].decode_s, "total_ms": 1e3 * statistics.median(total)}


def run(spec: dict, out_dir: str) -> list:
    s = parse_spec(SpeculativeBenchSpec, spec)
    tcfg, tparams, dcfg, dparams = _models(s)
    prompts = _prompts(s, tcfg.vocab_size)
    sp = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                        seed=s.seed)
    base = {"target": f"{tcfg.name or s.target_model} ({count_params(tparams) / 1e6:.1f}M)",
            "draft": f"{dcfg.name or s.draft_model} ({count_params(dparams) / 1e6:.1f}M)",
            "B": len(prompts), "prompt_lens": [len(p) for p in prompts], "max_new_tokens": s.max_new_tokens,
            "temperature": s.temperature, "backend": jax.default_backend()}
    plain, m = _measure(lambda: generate(tparams, tcfg, prompts, sp), s.warmup, s.repeats)
    rows = [{**base, "k": 0, "mode": "plain", **m, "speedup": 1.0, "num_generated": plain.num_generated,
             "status": "ok"}]
    for k in s.ks:
        res, m = _measure(lambda: speculative_generate(tparams, tcfg, dparams, dcfg, prompts, sp, k),
                          s.warmup, s.repeats)
        rows.append({**base, "k": k, "mode": "speculative", **m, "speedup": m["tok_s"] / rows[0]["tok_s"],
                     "accept_rate": res.mean_accepted / k, "mean_accepted": res.mean_accepted,
                     "tok_per_pass": res.tokens_per_target_pass,
                     "accept_by_pos": [round(a, 3) for a in res.acceptance_rate_by_position],
                     "accept_hist": res.accept_hist, "rounds": res.rounds, "num_generated": res.num_generated,
                     "greedy_match": (res.tokens == plain.tokens) if s.temperature == 0 else None,
                     "status": "ok"})
    return rows
