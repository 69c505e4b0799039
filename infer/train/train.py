"""The config-driven training loop (target model from data; draft via infer.train.distill).

    python -m infer.train.train --config target           # configs/train/target.yaml
    python -m infer.train.train --config target --steps 20 # override the number of steps

optax AdamW (decay on matrices only) with linear warm-up and cosine decay,
global-norm gradient clipping; a tqdm bar with loss and tokens/s; validation
loss every `eval_every` steps; an orbax CheckpointManager in `run_dir` holding
params + optimizer state, so an interrupted run resumes where it stopped (the
batch of step s depends only on (seed, s)). At the end the parameters are
exported to `export_dir` for inference.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from infer.model.forward import forward
from infer.model.heldout_loss import eval_loss, sequential_windows
from infer.model.params import count_params, init_params
from infer.train import data
from infer.train.config import RunConfig, load_run_config
from infer.train.shipped import save_model


def make_optimizer(tc) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.peak_lr, tc.warmup_steps, tc.steps,
                                                  tc.peak_lr * tc.end_lr_fraction)
    decay_mask = lambda params: jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    return optax.chain(optax.clip_by_global_norm(tc.clip_norm),
                       optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask))


_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def open_run(run_dir: str, params, opt_state):
    """(CheckpointManager, start step, params, opt_state): resumed from run_dir's latest checkpoint if any."""
    mngr = ocp.CheckpointManager(os.path.abspath(run_dir),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    start = 0
    if mngr.latest_step() is not None:
        start = mngr.latest_step()
        state = mngr.restore(start, args=ocp.args.StandardRestore({"params": params, "opt_state": opt_state}))
        params, opt_state = state["params"], state["opt_state"]
        print(f"resumed from {run_dir} at step {start}", flush=True)
    return mngr, start, params, opt_state


def make_train_step(tx, loss_fn):
    """jitted (params, opt_state, *batch) -> (params, opt_state, loss, grad norm) for loss_fn(params, *batch)."""
    @jax.jit
    def step_fn(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, _global_norm(grads)
    return step_fn


def lm_loss(params, cfg, windows_BT1):
    """Mean next-token cross-entropy (nats) of windows [B, T+1]."""
    logits_BTV = forward(params, cfg, windows_BT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, windows_BT1[:, 1:]).mean()


def train_loop(rc: RunConfig, loss_fn: Callable, extra=None, init=None) -> dict:
    """Run (or resume) training; loss_fn(params, windows_BT1, extra) -> scalar. Returns final params."""
    cfg, tc = rc.model, rc.train
    train_ids, val_ids = data.token_splits(tc.tokenizer, tc.val_fraction)
    val_windows = sequential_windows(val_ids, tc.seq_len, tc.eval_windows)
    tx = make_optimizer(tc)
    params = init if init is not None else init_params(cfg, jax.random.PRNGKey(tc.seed))
    opt_state = tx.init(params)
    mngr, start, params, opt_state = open_run(tc.run_dir, params, opt_state)
    print(f"{rc.name}: {count_params(params) / 1e6:.2f}M params, {len(train_ids) / 1e6:.2f}M train tokens, "
          f"{len(val_ids) / 1e6:.3f}M val tokens; {tc.steps} steps of {tc.batch_size}x{tc.seq_len}", flush=True)

    step_fn = make_train_step(tx, loss_fn)

    log_path = os.path.join(tc.run_dir, "log.jsonl")
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, mininterval=5, desc=rc.name)
    t_last, tok_since, t_start = time.perf_counter(), 0, time.perf_counter()
    for step in bar:
        w = jnp.asarray(data.random_windows(train_ids, tc.batch_size, tc.seq_len, tc.seed, step))
        params, opt_state, loss, gnorm = step_fn(params, opt_state, w, extra)
        tok_since += tc.batch_size * tc.seq_len
        done = step + 1
        if done % 10 == 0 or done == tc.steps:
            loss = float(loss)
            now = time.perf_counter()
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_since / (now - t_last):.0f}", refresh=False)
            rec = {"step": done, "loss": loss, "grad_norm": float(gnorm), "tokens_per_s": tok_since / (now - t_last),
                   "elapsed_s": now - t_start}
            t_last, tok_since = now, 0
            if done % tc.eval_every == 0 or done == tc.steps:
                rec["val_loss"] = eval_loss(params, cfg, val_windows, tc.batch_size)
                bar.write(f"step {done}: train loss {loss:.4f}, val loss {rec['val_loss']:.4f}")
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if done % tc.ckpt_every == 0 or done == tc.steps:
            mngr.save(done, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))
    mngr.wait_until_finished()
    save_model(tc.export_dir, cfg, params)
    print(f"exported {tc.export_dir} ({(time.perf_counter() - t_start) / 60:.1f} min this session)", flush=True)
    return params


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train the target model from data.")
    ap.add_argument("--config", default="target", help="configs/train/<name>.yaml or a path")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--run-dir", default=None, help="override train.run_dir")
    ap.add_argument("--export-dir", default=None, help="override train.export_dir")
    a = ap.parse_args(argv)
    rc = load_run_config(a.config)
    over = {k: v for k, v in (("steps", a.steps), ("run_dir", a.run_dir), ("export_dir", a.export_dir)) if v is not None}
    if over:
        rc = dataclasses.replace(rc, train=dataclasses.replace(rc.train, **over))
    cfg = rc.model
    train_loop(rc, lambda p, w, _: lm_loss(p, cfg, w))


if __name__ == "__main__":
    main()
