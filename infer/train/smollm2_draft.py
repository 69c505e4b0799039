"""A speculative-decoding draft for SmolLM2-135M-Instruct: pruned from it, then distilled into.

    python -m infer.train.smollm2_draft                    # configs/train/smollm2_draft.yaml
    python -m infer.train.smollm2_draft --steps 20          # a short run

    cfg, params = load_smollm2_draft()                      # models/smollm2-draft + the target's embedding

Recipe (the YAML names the values; `DraftRecipe` validates them):
  1. data: the target's own greedy replies to `data.chat_prompts` training questions
     (`train_questions`, rendered with its chat template; loss only on the reply) plus
     `data.code_windows` windows of Python stdlib code; the target's top-k logits at every
     position are computed once (build/…/data.npz, reused by a rerun);
  2. prune (infer.train.prune): keep `prune.n_layers` blocks by skip-loss, then per block
     `prune.n_kv_heads` KV heads with `prune.q_per_kv` query heads each and `prune.d_ff`
     MLP channels by Taylor importance, calibrated on the first training sequences;
  3. distil (infer.train.distill.distill_prebuilt): KL to the teacher's top-k + CE, the
     embedding table frozen (it is the target's, shared: tied LM head);
  4. ship: the draft without its embedding, in bfloat16, under `train.export_dir`
     (model_config.json + orbax params/, as infer.io.checkpoint, plus shared.json naming
     the tensor taken from the target). The pruned-only draft goes to `<run_dir>/pruned`.

`HELD_OUT_QUESTIONS` are never trained on: acceptance is measured on them
(infer.train.measure_smollm2_speculative).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import yaml

from infer.config.model_config import ConfigError
from infer.config.paths import REPO_ROOT
from infer.io.checkpoint import CONFIG_FILE, FORMAT_VERSION, PARAMS_DIR, read_checkpoint_config
from infer.io.hf_loader import CheckpointError
from infer.model.params import init_params
from infer.train.config import TRAIN_CONFIG_DIR, DistillConfig, TrainConfig

TARGET = "smollm2-135m-instruct"
DRAFT_DIR = os.path.join(REPO_ROOT, "models", "smollm2-draft")
SHARED_FILE = "shared.json"
SHARED = ("embed",)  # top-level parameter groups taken from the target, not stored with the draft
STORAGE_DTYPE = "bfloat16"

HELD_OUT_QUESTIONS = (
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Why is the sky blue?",
    "Give me three tips for better sleep.",
    "What is the difference between a virus and a bacterium?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in simple terms.",
    "How many continents are there, and what are they?",
    "What causes the seasons on Earth?",
    "Suggest a name for a small coffee shop.",
    "What is photosynthesis?",
    "How can I improve my public speaking skills?",
    "What does HTTP stand for?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are the benefits of drinking water?",
    "How do I convert Celsius to Fahrenheit?",
)

_TOPICS = ("the water cycle", "black holes", "machine learning", "the French Revolution", "volcanoes",
           "compound interest", "the immune system", "recursion in programming", "climate change",
           "the Roman Empire", "electric cars", "meditation", "the internet", "honeybees", "gravity",
           "the stock market", "DNA", "renewable energy", "chess", "the human heart", "coffee", "earthquakes",
           "Python decorators", "the Moon landing", "vaccines", "rainforests", "sorting algorithms", "democracy",
           "jazz music", "time management", "the Pythagorean theorem", "ocean tides")
_TEMPLATES = ("What is {}?", "Explain {} to a ten-year-old.", "Give me three facts about {}.",
              "Why is {} important?", "Write a short paragraph about {}.", "What are common misconceptions about {}?",
              "How would you teach {} to a beginner?", "Write a short poem about {}.")


def train_questions(n: int):
    """The first n training questions (topic x template, interleaved so that a prefix covers every topic)."""
    qs = [t.format(topic) for i, t in enumerate(_TEMPLATES) for topic in _TOPICS[i % 2::2] + _TOPICS[1 - i % 2::2]]
    qs = [q[0].upper() + q[1:] for q in qs]
    if not 1 <= n <= len(qs):
        raise ValueError(f"data.chat_prompts: must be in [1, {len(qs)}], got {n}")
    return qs[:n]


def require(cond, field, msg):
    if not cond:
        raise ConfigError(f"{field}: {msg}")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    n_layers: int  # L' blocks kept
    n_kv_heads: int  # K' KV heads kept per block
    q_per_kv: int  # G' query heads kept per kept KV head
    d_ff: int  # F' MLP channels kept per block
    layer_rounds: int = 3  # skip scores re-measured this many times while removing blocks
    calib_sequences: int = 8  # the first training chat sequences

    def __post_init__(self):
        for f in ("n_layers", "n_kv_heads", "q_per_kv", "d_ff", "layer_rounds", "calib_sequences"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"prune.{f}", f"must be an int > 0, got {v!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    chat_prompts: int  # training questions answered by the target
    response_tokens: int  # max new tokens of each greedy reply
    code_windows: int  # windows of stdlib code (train split of infer.train.corpus)
    teacher_top_k: int = 32  # teacher logits kept per position
    val_rows: int = 16  # rows held back for the validation loss (the last ones, after shuffling)
    generate_batch: int = 16
    self_questions: int = 0  # more questions, written by the target itself (infer/train/self_questions.py)

    def __post_init__(self):
        for f in ("chat_prompts", "response_tokens", "teacher_top_k", "val_rows", "generate_batch"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"data.{f}", f"must be an int > 0, got {v!r}")
        for f in ("code_windows", "self_questions"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"data.{f}", f"must be an int >= 0, got {v!r}")


@dataclasses.dataclass(frozen=True)
class DraftRecipe:
    target: str
    prune: PruneConfig
    data: DataConfig
    train: TrainConfig  # seq_len = T tokens per row (prompt + reply, truncated / padded)
    distill: DistillConfig  # distill.teacher is the target

    def __post_init__(self):
        require(self.distill.teacher == self.target, "distill.teacher",
                 f"must be the target {self.target!r}, got {self.distill.teacher!r}")
        require(self.data.val_rows < self.data.chat_prompts + self.data.code_windows, "data.val_rows",
                 f"must be fewer than the rows ({self.data.chat_prompts + self.data.code_windows})")


def read_recipe(name_or_path: str, recipe_cls, sections: dict):
    """configs/train/<name>.yaml (or a path) as a validated recipe_cls(target=..., **sections); errors name the
    field."""
    path = name_or_path if os.path.exists(name_or_path) else os.path.join(TRAIN_CONFIG_DIR, f"{name_or_path}.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no recipe {name_or_path!r} (looked in {TRAIN_CONFIG_DIR})")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    bad = sorted(set(d) - set(sections) - {"target"})
    require(not bad, bad[0] if bad else "", f"unknown section in {path} (known: target, {', '.join(sections)})")
    out = {"target": d.get("target", TARGET)}
    for key, cls in sections.items():
        sec = d.get(key)
        require(isinstance(sec, dict), key, f"a mapping is required in {path}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(sec) - known)
        require(not unknown, f"{key}.{unknown[0] if unknown else ''}", f"unknown field (known: {sorted(known)})")
        out[key] = cls(**sec)
    return recipe_cls(**out)


def load_recipe(name_or_path: str = "smollm2_draft") -> DraftRecipe:
    """configs/train/<name>.yaml (or a path) as a validated DraftRecipe; errors name the field."""
    return read_recipe(name_or_path, DraftRecipe,
                       {"prune": PruneConfig, "data": DataConfig, "train": TrainConfig, "distill": DistillConfig})


# Data -----------------------------------------------------------------------------------------

def chat_prompt_ids(tok, question: str):
    """Token ids of one user question rendered with the target's chat template (generation prompt added)."""
    return tok.chat_template.encode(tok, [{"role": "user", "content": question}])


def stop_ids(tok):
    return tok.chat_template.end_of_turn_ids(tok)


def build_rows(tparams, tcfg, tok, recipe: DraftRecipe):
    """Rows of (tokens [T+1], weights [T]): chat (prompt + greedy reply, weight on the reply) then code."""
    from infer.config import SamplingParams
    from infer.generation.batch import generate
    from infer.train.corpus import read_split
    dc, T = recipe.data, recipe.train.seq_len
    sp = SamplingParams(temperature=0.0, max_new_tokens=dc.response_tokens, stop_token_ids=stop_ids(tok))
    questions = train_questions(dc.chat_prompts)
    if dc.self_questions:
        from infer.train.self_questions import sample_questions
        questions += sample_questions(tparams, tcfg, tok, dc.self_questions, seed=recipe.train.seed,
                                      exclude=HELD_OUT_QUESTIONS + tuple(questions))
    prompts = [chat_prompt_ids(tok, q) for q in questions]
    tokens, weights = [], []
    for i in range(0, len(prompts), dc.generate_batch):
        batch = prompts[i:i + dc.generate_batch]
        t0 = time.perf_counter()
        replies = generate(tparams, tcfg, batch, sp).tokens
        print(f"target replies {i + len(batch)}/{len(prompts)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for p, r in zip(batch, replies):
            seq = (p + r)[:T + 1]
            w = np.zeros(T, np.float32)
            w[len(p) - 1:len(seq) - 1] = 1.0  # positions that predict a reply token
            tokens.append(seq)
            weights.append(w)
    if dc.code_windows:
        train_texts, _ = read_split()
        rng = np.random.default_rng(recipe.train.seed)
        for f in rng.choice(len(train_texts), dc.code_windows, replace=False):
            text = train_texts[f]
            start = int(rng.integers(0, max(1, len(text) - 8 * T)))
            seq = tok.encode(text[start:start + 8 * T], add_special_tokens=False)[:T + 1]
            w = np.zeros(T, np.float32)
            w[:len(seq) - 1] = 1.0
            tokens.append(seq)
            weights.append(w)
    tokens_NT1 = np.zeros((len(tokens), T + 1), np.int32)
    for i, s in enumerate(tokens):
        tokens_NT1[i, :len(s)] = s
    return tokens_NT1, np.stack(weights)


def teacher_topk(tparams, tcfg, tokens_NT1, k: int, batch: int = 8):
    """The teacher's k largest logits and their ids at every input position: ([N, T, k] f32, [N, T, k] i32)."""
    from infer.model.forward import forward

    @jax.jit
    def top(x_BT):
        return jax.lax.top_k(forward(tparams, tcfg, x_BT), k)

    vals, ids = [], []
    for i in range(0, len(tokens_NT1), batch):
        v, j = top(jnp.asarray(tokens_NT1[i:i + batch, :-1]))
        vals.append(np.asarray(v, np.float32))
        ids.append(np.asarray(j, np.int32))
    return np.concatenate(vals), np.concatenate(ids)


def build_data(tparams, tcfg, tok, recipe: DraftRecipe, cache_path: str) -> dict:
    """Distillation arrays (infer.train.distill.topk_distill_loss fields, leading row axis), cached in an .npz
    together with the recipe fields they came from: a cache built from other fields is rebuilt, not reused."""
    key = json.dumps({"data": dataclasses.asdict(recipe.data), "seq_len": recipe.train.seq_len,
                      "seed": recipe.train.seed, "target": recipe.target}, sort_keys=True)
    if os.path.exists(cache_path):
        with np.load(cache_path) as z:
            cached = {k: z[k] for k in z.files}
        if str(cached.pop("recipe_key", "")) == key:
            return cached
        print(f"data: {cache_path} was built from other recipe fields; rebuilding it", flush=True)
    t0 = time.perf_counter()
    tokens_NT1, weights_NT = build_rows(tparams, tcfg, tok, recipe)
    t1 = time.perf_counter()
    top_logits, top_ids = teacher_topk(tparams, tcfg, tokens_NT1, recipe.data.teacher_top_k)
    print(f"data: {len(tokens_NT1)} rows, {int(weights_NT.sum())} weighted tokens; replies {t1 - t0:.0f} s, "
          f"teacher top-k {time.perf_counter() - t1:.0f} s", flush=True)
    arrays = {"tokens_BT1": tokens_NT1, "weights_BT": weights_NT, "top_ids_BTK": top_ids,
              "top_logits_BTK": top_logits}
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    np.savez(cache_path, recipe_key=np.asarray(key), **arrays)
    return arrays


def split_rows(arrays: dict, val_rows: int, seed: int):
    """(train, val): the data's rows shuffled by seed, the last val_rows held back for validation."""
    order = np.random.default_rng(seed).permutation(len(arrays["tokens_BT1"]))
    return ({k: v[order[:-val_rows]] for k, v in arrays.items()}, {k: v[order[-val_rows:]] for k, v in arrays.items()})


# Shipping --------------------------------------------------------------------------------------

def save_draft(path: str, cfg, params, target: str = TARGET) -> None:
    """Store the draft minus the shared groups (SHARED), in bfloat16, replacing what is at `path`."""
    stored = {k: jax.tree_util.tree_map(lambda x: jnp.asarray(x, STORAGE_DTYPE), v)
              for k, v in params.items() if k not in SHARED}
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        os.remove(os.path.join(path, CONFIG_FILE))  # incomplete until the config is written again
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, PARAMS_DIR), stored, force=True)
        ckptr.wait_until_finished()
    with open(os.path.join(path, SHARED_FILE), "w") as f:
        json.dump({"target": target, "shared": list(SHARED)}, f, indent=2)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump({"format_version": FORMAT_VERSION, "model_config": cfg.replace(dtype=STORAGE_DTYPE).to_dict()},
                  f, indent=2)


def load_smollm2_draft(path: str = DRAFT_DIR, target_params=None, dtype: str = "float32"):
    """(cfg, params) of a draft written by save_draft, its shared groups taken from `target_params`
    (loaded from the named target when None), everything cast to `dtype`."""
    path = os.path.abspath(path)
    cfg = read_checkpoint_config(path)
    with open(os.path.join(path, SHARED_FILE)) as f:
        shared = json.load(f)
    if target_params is None:
        from infer.io.checkpoint import load_model_dir
        _, target_params = load_model_dir(shared["target"], dtype=dtype)
    tree = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    want = {k: v for k, v in tree.items() if k not in shared["shared"]}
    with ocp.StandardCheckpointer() as ckptr:
        try:
            stored = ckptr.restore(os.path.join(path, PARAMS_DIR), want)
        except Exception as e:  # orbax raises several types for a damaged or mismatched directory
            raise CheckpointError(f"{path}: cannot restore the draft ({type(e).__name__}: {str(e)[:300]})") from None
    cfg = cfg.replace(dtype=dtype)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), stored)
    for k in shared["shared"]:
        params[k] = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), target_params[k])
    return cfg, params


def write_train_report(run_dir: str, export_dir: str) -> dict:
    """export_dir/train_report.json: what pruning kept (run_dir/prune_report.json) and the loss curve (log.jsonl)."""
    with open(os.path.join(run_dir, "prune_report.json")) as f:
        report = json.load(f)
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f if line.strip()]
    report["log"] = log
    with open(os.path.join(export_dir, "train_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


# The recipe ------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="Prune SmolLM2-135M-Instruct into a draft, distil, ship it.")
    ap.add_argument("--config", default="smollm2_draft", help="configs/train/<name>.yaml or a path")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    a = ap.parse_args(argv)
    recipe = load_recipe(a.config)
    if a.steps is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=a.steps))
    from infer.io.checkpoint import load_model_dir
    from infer.io.tokenizer import load_tokenizer
    from infer.model.params import count_params
    from infer.train.distill import distill_prebuilt
    from infer.train.prune import prune_to_size

    tc, pc = recipe.train, recipe.prune
    tcfg, tparams = load_model_dir(recipe.target, dtype="float32")
    tok = load_tokenizer(recipe.target)
    arrays = build_data(tparams, tcfg, tok, recipe, os.path.join(tc.run_dir, "data.npz"))
    pruned_dir = os.path.join(tc.run_dir, "pruned")
    if os.path.exists(os.path.join(pruned_dir, CONFIG_FILE)):
        dcfg, dparams = load_smollm2_draft(pruned_dir, tparams)
    else:
        t0 = time.perf_counter()
        n = pc.calib_sequences
        dparams, dcfg, report = prune_to_size(tparams, tcfg, arrays["tokens_BT1"][:n], arrays["weights_BT"][:n],
                                              pc.n_layers, pc.n_kv_heads, pc.q_per_kv, pc.d_ff, pc.layer_rounds)
        report["prune_s"] = time.perf_counter() - t0
        save_draft(pruned_dir, dcfg, dparams, recipe.target)
        with open(os.path.join(tc.run_dir, "prune_report.json"), "w") as f:
            json.dump(report, f, indent=1)
        print(f"pruned in {report['prune_s']:.0f} s: layers {report['kept_layers']}", flush=True)
    frozen = {k: dparams[k] for k in SHARED}
    trainable = {k: v for k, v in dparams.items() if k not in SHARED}
    print(f"draft {dcfg.name}: {count_params(trainable) / 1e6:.2f}M non-embedding params", flush=True)
    train, val = split_rows(arrays, recipe.data.val_rows, tc.seed)
    trained, _ = distill_prebuilt(trainable, dcfg, frozen, train, val, tc, recipe.distill, name="smollm2-draft")
    save_draft(tc.export_dir, dcfg.replace(name="smollm2-135m-draft"), {**trained, **frozen}, recipe.target)
    write_train_report(tc.run_dir, tc.export_dir)
    print(f"exported {tc.export_dir}", flush=True)


if __name__ == "__main__":
    main()
