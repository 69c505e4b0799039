"""Write models/MODEL_CARD.md from the measured numbers (models/*.json) and the training logs.

    python -m infer.train.write_card

Inputs: models/{target,draft}/config.json-equivalent (via load_model),
models/eval_target.json, models/eval_target_slice.json, models/eval_draft.json,
models/speculative_metrics.json, models/train_{target,draft}.json (copied training-log summaries).
"""
from __future__ import annotations

import json
import os
import platform
import sys

from infer.model.params import count_params
from infer.train import corpus
from infer.train.config import load_run_config
from infer.train.shipped import MODELS_DIR, STORAGE_DTYPE, load_model


def _j(name):
    with open(os.path.join(MODELS_DIR, name)) as f:
        return json.load(f)


def summarize_log(name: str, where: str) -> dict:
    """models/train_<name>.json from build/runs/<name>/log.jsonl (wall time summed over resumed sessions)."""
    with open(os.path.join("build", "runs", name, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    wall = sum(a["elapsed_s"] for a, b in zip(recs, recs[1:] + [None]) if b is None or b["elapsed_s"] < a["elapsed_s"])
    out = {"steps": recs[-1]["step"], "final_loss": recs[-1]["loss"], "wall_min": wall / 60,
           "session_end_steps": [a["step"] for a, b in zip(recs, recs[1:] + [None])
                                 if b is None or b["elapsed_s"] < a["elapsed_s"]],
           "where": where, "median_tokens_per_s": sorted(r["tokens_per_s"] for r in recs)[len(recs) // 2],
           "val_loss_curve": [[r["step"], r["val_loss"]] for r in recs if "val_loss" in r]}
    with open(os.path.join(MODELS_DIR, f"train_{name}.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def _shape(cfg, params):
    emb = params["embed"]["embedding"].size + (params["lm_head"]["kernel"].size if "lm_head" in params else 0)
    n = count_params(params)
    return (f"D={cfg.d_model}, L={cfg.n_layers}, N={cfg.n_heads}, K={cfg.n_kv_heads}, H={cfg.head_dim}, "
            f"F={cfg.d_ff}, V={cfg.vocab_size}, RoPE theta {cfg.rope_theta:g}, untied embeddings; "
            f"{n / 1e6:.2f}M parameters ({(n - emb) / 1e6:.2f}M without embedding and head)")


def _train_line(summary, rc):
    t = rc.train
    return (f"{t.steps} steps x {t.batch_size} x {t.seq_len} tokens ({t.steps * t.batch_size * t.seq_len / 1e6:.2f}M "
            f"tokens), AdamW (b1 {t.b1}, b2 {t.b2}, weight decay {t.weight_decay} on matrices), peak LR {t.peak_lr:g}, "
            f"{t.warmup_steps} warm-up steps then cosine to {t.end_lr_fraction:g}x, clip {t.clip_norm}; "
            f"{summary['wall_min']:.1f} min wall on {summary['where']}; final train loss {summary['final_loss']:.3f}"
            + (f"; run in sessions ending at steps {summary['session_end_steps']}: the first ran as a "
               f"{summary['session_end_steps'][0]}-step recipe, then the run was resumed from its orbax checkpoint "
               f"with steps: {t.steps} (so the cosine schedule restarted from mid-way)"
               if len(summary.get("session_end_steps", [])) > 1 else ""))


def main():
    import jax
    where = f"2 CPU cores shared with other jobs (Python {platform.python_version()}, jax {jax.__version__})"
    for name in ("target", "draft"):
        if os.path.exists(os.path.join("build", "runs", name, "log.jsonl")):
            summarize_log(name, where)
    tcfg, tparams = load_model(os.path.join(MODELS_DIR, "target"))
    dcfg, dparams = load_model(os.path.join(MODELS_DIR, "draft"))
    ev, sl, evd = _j("eval_target.json"), _j("eval_target_slice.json"), _j("eval_draft.json")
    spec, trt, trd = _j("speculative_metrics.json"), _j("train_target.json"), _j("train_draft.json")
    rct, rcd = load_run_config("target"), load_run_config("draft")
    b, s1 = spec["batched"], spec["batch1_mean_of_2_prompts"]
    n_files = corpus.list_files()
    n_val = sum(corpus.split_of(f, 0.05) == "val" for f in n_files)
    card = f"""# Shipped models: a code-completion target and its distilled draft

Two Llama-style GQA decoders trained from scratch in this repository on CPU, for
the training example's demo (`make demo-trained` = `python -m infer.train.demo`) and speculative decoding.
Loaded with `infer.train.shipped.load_model("models/target")` (= `infer.io.checkpoint.load_model_dir(path, dtype="float32")`,
returns `(ModelConfig, params)`); tokenizer `models/tokenizer.json`.

| | target (`models/target`) | draft (`models/draft`) |
|---|---|---|
| shape | {_shape(tcfg, tparams)} | {_shape(dcfg, dparams)} |
| training | {_train_line(trt, rct)} | distilled from the target: {_train_line(trd, rcd)} |
| loss | next-token cross-entropy on the data | {rcd.distill.kl_weight:g} x tau^2 x KL(target || draft) at tau={rcd.distill.temperature:g} + {rcd.distill.ce_weight:g} x data CE |
| command | `python -m infer.train.train --config target` | `python -m infer.train.distill --config draft` |
| validation loss (whole split) | {ev['val_loss_nats_per_token']:.4f} nats/token | {evd['val_loss_nats_per_token']:.4f} nats/token |
| validation bits per byte | **{ev['bits_per_byte']:.3f}** | {evd['bits_per_byte']:.3f} |

Storage: the project's checkpoint format (`infer.io.checkpoint`: `model_config.json` + orbax `params/`), weights stored in
{STORAGE_DTYPE} (the stored config says dtype {STORAGE_DTYPE}) and cast to float32 on load; every number here is measured on the loaded, stored weights.
Configs: `configs/train/target.yaml`, `configs/train/draft.yaml`; a larger recipe for one GPU is
`configs/train/target_gpu.yaml` (~28M parameters; not trained here: no GPU was lent to this task).

## Data and tokenizer

- Corpus: the `.py` files of the Python standard library of the training interpreter
  (Python {platform.python_version()}, `sysconfig.get_paths()["stdlib"]`), excluding `test`/`tests`/`idle_test`,
  `lib2to3` and `site-packages`: {len(n_files)} files. Split by file: a file is validation when the first 8 bytes of
  sha256(relative path) / 2^64 < 0.05 ({n_val} validation files, {ev['bytes'] / 1e6:.2f} MB of validation text
  counted). Files are joined with an `<|endoftext|>` token. Code: `infer/train/corpus.py`.
- Tokenizer: byte-level BPE, vocabulary 4096 (incl. `<|endoftext|>`), trained on the train split with the
  `tokenizers` package: `python -m infer.train.train_tokenizer --vocab-size 4096` -> `models/tokenizer.json`.
  {ev['bytes_per_token']:.2f} bytes per token on the validation split.

## Validation (`python -m infer.train.evaluate --model models/target`)

- Bits per byte = total next-token NLL in bits / UTF-8 bytes of the predicted tokens' text, over
  non-overlapping 256-token windows of the whole validation split ({ev['tokens']:,} predicted tokens, {ev['bytes']:,} bytes;
  the EOS separator counts 0 bytes).
- Target: **{ev['bits_per_byte']:.3f} bits/byte** ({ev['val_loss_nats_per_token']:.4f} nats/token).
- Byte-unigram baseline (byte frequencies of the train split, add-one smoothed, cross-entropy on the validation
  bytes): **{ev['byte_unigram_bits_per_byte']:.3f} bits/byte**. The target is at
  {ev['ratio_to_unigram']:.1%} of it (requirement: at most 50%).
- Fixed slice `models/val_slice.txt` (the first 16 windows of the validation split, checked in so the test does not
  depend on the interpreter): val loss **{sl['val_loss_nats_per_token']:.4f}** nats/token, {sl['bits_per_byte']:.3f} bits/byte
  (`python -m infer.train.evaluate --model models/target --slice`). `tests/test_shipped_model.py` recomputes it and
  checks it within 2%.

## Speculative decoding (`python -m infer.train.measure_speculative --out models/speculative_metrics.json`)

Temperature 0, k = 4, prompts = {b['batch']} windows of 64 tokens of the validation slice, {b['max_new_tokens']} new tokens,
on {spec['device']}; warm runs, median of 3. Acceptance = accepted draft tokens / proposed draft tokens.

| | acceptance | tokens per target pass | plain tok/s | speculative tok/s | speed-up |
|---|---|---|---|---|---|
| batch {b['batch']} | **{b['acceptance']:.1%}** | {b['tokens_per_target_pass']:.2f} | {b['plain_tokens_per_s']:.1f} | {b['speculative_tokens_per_s']:.1f} | x{b['speedup']:.2f} |
| batch 1 (mean of 2 prompts) | {s1['acceptance']:.1%} | | {s1['plain_tokens_per_s']:.1f} | {s1['speculative_tokens_per_s']:.1f} | x{s1['speedup']:.2f} |

Acceptance by draft position (batch {b['batch']}): {', '.join(f'{r:.2f}' for r in b['acceptance_by_position'])}.
Greedy speculative output identical to plain generation: {b['same_output']}.
CPU timings are from a 2-core machine shared with other jobs (timings vary with the load; the ratios of
side-by-side runs are the meaningful part). On CPU at these sizes a step is largely overhead-bound, so a
draft step costs a good fraction of a target step and the gain from speculation is small or negative; it
pays off where a target step is memory-bound and much more expensive than a draft step (GPU, larger target).
Acceptance depends on the text: on the demo's hand-written prompts (`python -m infer.train.demo`) it differs from that
on these validation windows (83% at batch 1, 55% at batch 4 in one run).

## Reproduce

```
python -m infer.train.train_tokenizer --vocab-size 4096 --out models/tokenizer.json
python -m infer.train.train --config target          # resumable: rerun after an interruption
python -m infer.train.distill --config draft
python -m infer.train.evaluate --model models/target --write-slice --out models/eval_target.json
python -m infer.train.evaluate --model models/target --slice --out models/eval_target_slice.json
python -m infer.train.evaluate --model models/draft --out models/eval_draft.json
python -m infer.train.measure_speculative --k 4 --out models/speculative_metrics.json
python -m infer.train.write_card
```
"""
    with open(os.path.join(MODELS_DIR, "MODEL_CARD.md"), "w") as f:
        f.write(card)
    print(f"wrote {os.path.join(MODELS_DIR, 'MODEL_CARD.md')}")


if __name__ == "__main__":
    sys.exit(main())
