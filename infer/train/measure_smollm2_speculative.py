"""Speculative decoding of SmolLM2-135M-Instruct with its drafts, on held-out chat prompts.

    python -m infer.train.measure_smollm2_speculative --out models/smollm2-draft/speculative_metrics.json

Prompts: infer.train.smollm2_draft.HELD_OUT_QUESTIONS (never trained on), each rendered
with the target's chat template; generation stops at the end of the assistant's turn
(or max_new_tokens). Temperature 0, k draft tokens per target pass. For each draft
(--drafts: the EAGLE draft, the pruned+distilled draft and the pruned-only one; an EAGLE draft,
`feature_input`, runs through infer.generation.eagle, the others through infer.generation.speculative):
  acceptance   accepted / proposed drafts over every verify pass of all held-out prompts
               (batches of 8), with acceptance by position and tokens per target pass;
  batch 1      tokens/s, plain and speculative, on the first --batch1-prompts prompts
               (warm-up run, then the median of --repeats);
  batch 8      the same on the first 8 prompts at once;
  same_output  the greedy speculative tokens == the greedy plain tokens, every run;
  draft_step_cost  the time of 64 single-token draft steps / 64 target decode steps, batch 1, each
               as one jitted loop (`step_cost`): the draft's cost per step in target steps.
  test_subset  acceptance on the first TEST_PROMPTS prompts with TEST_MAX_NEW tokens: what
               tests/test_smollm2_draft.py re-measures and compares.
--acceptance-only: the acceptance rows and same_output alone (no timings), e.g. for a draft in training.
Plain generation is measured once and shared by the drafts.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from infer.config import SamplingParams
from infer.generation.batch import generate
from infer.generation.eagle import eagle_speculative_generate
from infer.generation.speculative import speculative_generate
from infer.model.rows import extend_rows, init_cache
from infer.train.shipped import report_json
from infer.train.eagle_draft import EAGLE_DIR
from infer.train.smollm2_draft import (DRAFT_DIR, HELD_OUT_QUESTIONS, TARGET, chat_prompt_ids, load_smollm2_draft,
                                       stop_ids)

TEST_PROMPTS, TEST_MAX_NEW = 4, 48


def held_out_prompts(tok, n: int = len(HELD_OUT_QUESTIONS)):
    """Token ids of the first n held-out questions, chat-templated."""
    return [chat_prompt_ids(tok, q) for q in HELD_OUT_QUESTIONS[:n]]


def acceptance(accept_hist, k: int) -> float:
    h = np.asarray(accept_hist, np.float64)
    return float((h * np.arange(len(h))).sum() / (k * h.sum()))


def spec_generate(tparams, tcfg, dparams, dcfg, prompts, sp, k: int):
    """Speculative generation with either kind of draft (an EAGLE draft reads the target's features)."""
    fn = eagle_speculative_generate if dcfg.feature_input else speculative_generate
    return fn(tparams, tcfg, dparams, dcfg, prompts, sp, k=k)


def step_cost(tparams, tcfg, dparams, dcfg, steps: int = 64, repeats: int = 5) -> float:
    """Median time of `steps` single-token draft steps / the same number of target steps, batch 1, each one
    jitted fori_loop over the cached step (an EAGLE draft feeds its own output feature back)."""
    def timed(params, cfg):
        @jax.jit
        def run(params):
            cache = init_cache(cfg, 1, steps + 8)
            feat = jnp.zeros((1, 1, cfg.d_model), jnp.float32) if cfg.feature_input else None

            def body(i, st):
                tok, f, cache = st
                out = extend_rows(params, cfg, tok, jnp.ones((1,), jnp.int32), cache, features_BTD=f,
                                  hidden=cfg.feature_input)
                logits, h, cache = out if cfg.feature_input else (out[0], None, out[1])
                nxt = jnp.argmax(logits, -1).astype(jnp.int32)[:, None]
                return nxt, (h[:, None] if cfg.feature_input else f), cache

            return jax.lax.fori_loop(0, steps, body, (jnp.ones((1, 1), jnp.int32), feat, cache))[0]

        run(params).block_until_ready()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(params).block_until_ready()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    return timed(dparams, dcfg) / timed(tparams, tcfg)


def _median(fn, repeats: int):
    fn()  # warm-up (compilation)
    runs = [fn() for _ in range(repeats)]
    return sorted(runs, key=lambda r: r.tokens_per_s)[len(runs) // 2], runs


def acceptance_stats(tparams, tcfg, dparams, dcfg, prompts, sp, k: int, plain_tokens) -> dict:
    """Acceptance over all prompts (batches of 8); checks the output against the plain greedy tokens."""
    hist, same = np.zeros(k + 1, np.int64), True
    for i in range(0, len(prompts), 8):
        r = spec_generate(tparams, tcfg, dparams, dcfg, prompts[i:i + 8], sp, k)
        hist += np.asarray(r.accept_hist)
        same &= r.tokens == plain_tokens[i:i + 8]
    passes = max(1, int(hist.sum()))
    return {"prompts": len(prompts), "acceptance": acceptance(hist, k), "accept_hist": hist.tolist(),
            "acceptance_by_position": [float(hist[j + 1:].sum() / passes) for j in range(k)],
            "tokens_per_target_pass": float((hist * np.arange(k + 1)).sum() / passes + 1.0),
            "same_output": bool(same)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafts", nargs="+", default=None,
                    help="draft directories written by infer.train.smollm2_draft.save_draft (default: the shipped "
                         "draft, the pruned-only one and models/smollm2-eagle when `python -m "
                         "infer.train.eagle_draft` has made it)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch1-prompts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--acceptance-only", action="store_true",
                    help="acceptance and same_output on all held-out prompts; no timings, no test subset")
    a = ap.parse_args(argv)
    if a.drafts is None:
        a.drafts = [DRAFT_DIR, "build/runs/smollm2-draft/pruned"] + ([EAGLE_DIR] if os.path.isdir(EAGLE_DIR) else [])
    from infer.io.checkpoint import load_model_dir
    from infer.io.tokenizer import load_tokenizer
    tcfg, tparams = load_model_dir(TARGET, dtype="float32")
    tok = load_tokenizer(TARGET)
    prompts = held_out_prompts(tok)
    sp = SamplingParams(temperature=0.0, max_new_tokens=a.max_new_tokens, stop_token_ids=stop_ids(tok))

    plain_all = []
    for i in range(0, len(prompts), 8):
        plain_all += generate(tparams, tcfg, prompts[i:i + 8], sp).tokens
    if a.acceptance_only:
        out = {"target": TARGET, "temperature": 0.0, "k": a.k, "max_new_tokens": a.max_new_tokens, "drafts": {}}
        for path in a.drafts:
            dcfg, dparams = load_smollm2_draft(path, tparams)
            row = acceptance_stats(tparams, tcfg, dparams, dcfg, prompts, sp, a.k, plain_all)
            out["drafts"][os.path.relpath(os.path.abspath(path))] = row
            print(f"{path}: acceptance {row['acceptance']:.3f}, by position "
                  f"{[round(x, 3) for x in row['acceptance_by_position']]}, same output {row['same_output']}", flush=True)
        return report_json(out, a.out)
    plain_b1 = [_median(lambda p=p: generate(tparams, tcfg, [p], sp), a.repeats)[0]
                for p in prompts[:a.batch1_prompts]]
    plain_b8, _ = _median(lambda: generate(tparams, tcfg, prompts[:8], sp), a.repeats)
    out = {"device": f"{jax.default_backend()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
           "target": TARGET, "temperature": 0.0, "k": a.k, "max_new_tokens": a.max_new_tokens,
           "plain": {"batch1_tokens_per_s": [r.tokens_per_s for r in plain_b1],
                     "batch8_tokens_per_s": plain_b8.tokens_per_s}, "drafts": {}}
    for path in a.drafts:
        dcfg, dparams = load_smollm2_draft(path, tparams)
        row = {"config": {f: getattr(dcfg, f) for f in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                                                         "feature_input")},
               **acceptance_stats(tparams, tcfg, dparams, dcfg, prompts, sp, a.k, plain_all)}
        sp_test = SamplingParams(temperature=0.0, max_new_tokens=TEST_MAX_NEW, stop_token_ids=stop_ids(tok))
        sub = prompts[:TEST_PROMPTS]
        row["test_subset"] = acceptance_stats(tparams, tcfg, dparams, dcfg, sub, sp_test, a.k,
                                              generate(tparams, tcfg, sub, sp_test).tokens)
        spec = lambda ps: (lambda: spec_generate(tparams, tcfg, dparams, dcfg, ps, sp, a.k))
        b1, same1 = [], []
        for p, pl in zip(prompts[:a.batch1_prompts], plain_b1):
            med, runs = _median(spec([p]), a.repeats)
            b1.append(med.tokens_per_s / pl.tokens_per_s)
            same1.append(all(r.tokens == pl.tokens for r in runs))
        med8, runs8 = _median(spec(prompts[:8]), a.repeats)
        row.update({"batch1_speculative_tokens_per_s_ratio": b1, "batch1_speedup_mean": float(np.mean(b1)),
                    "batch8_speculative_tokens_per_s": med8.tokens_per_s,
                    "batch8_speedup": med8.tokens_per_s / plain_b8.tokens_per_s,
                    "draft_step_cost": step_cost(tparams, tcfg, dparams, dcfg),
                    "same_output": row["same_output"] and all(same1) and all(r.tokens == plain_b8.tokens for r in runs8)})
        out["drafts"][os.path.relpath(os.path.abspath(path))] = row
        print(f"{path}: acceptance {row['acceptance']:.3f}, batch 1 x{row['batch1_speedup_mean']:.2f}, "
              f"batch 8 x{row['batch8_speedup']:.2f}", flush=True)
    report_json(out, a.out)


if __name__ == "__main__":
    main()
