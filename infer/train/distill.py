"""Distil a small draft model from the trained target (for speculative decoding).

    python -m infer.train.distill --config draft

Loss per position (nats), teacher = the shipped target, student = the draft:
    kl_weight * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)) + ce_weight * CE(data, z_s)
The KL term trains the draft on the target's whole next-token distribution, not
only on the data's next token, which is what speculative acceptance rewards.
The teacher's logits are computed on the fly for each batch (teacher frozen).
Everything else (optimizer, schedule, checkpoints, resume) is infer.train.train.

`distill_prebuilt` distils into a draft that already exists (e.g. a pruned target,
infer.train.prune) from precomputed teacher top-k logits on fixed sequences
(`topk_distill_loss`); part of the draft's parameters can stay frozen (a shared
embedding table). Same optimizer, checkpoints and resume as infer.train.train.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from infer.model.forward import forward
from infer.train.config import DistillConfig, TrainConfig, load_run_config
from infer.train.shipped import load_model
from infer.train.train import make_optimizer, make_train_step, open_run, train_loop


def distill_loss(params, cfg, teacher_params, teacher_cfg, windows_BT1, dc):
    x_BT = windows_BT1[:, :-1]
    zs_BTV = forward(params, cfg, x_BT)
    zt_BTV = jax.lax.stop_gradient(forward(teacher_params, teacher_cfg, x_BT))
    tau = dc.temperature
    pt_BTV = jax.nn.softmax(zt_BTV / tau, axis=-1)
    kl_BT = jnp.sum(pt_BTV * (jax.nn.log_softmax(zt_BTV / tau, axis=-1) - jax.nn.log_softmax(zs_BTV / tau, axis=-1)),
                    axis=-1)
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(zs_BTV, windows_BT1[:, 1:])
    return dc.kl_weight * tau ** 2 * kl_BT.mean() + dc.ce_weight * ce_BT.mean()


def topk_distill_loss(params, cfg, frozen, batch, dc):
    """Weighted mean over positions of kl_weight * tau^2 * KL(teacher top-k || student) + ce_weight * CE(data).

    batch: tokens_BT1 [B, T+1] int; weights_BT [B, T] (weight of predicting tokens_BT1[:, t + 1]);
    top_ids_BTK, top_logits_BTK [B, T, Kt]: the teacher's Kt largest logits at each input position.
    The teacher distribution is softmax(top_logits / tau) renormalised over its top Kt tokens; the
    student's log-probabilities are over the whole vocabulary. `frozen` holds parameters that are not
    trained (merged into params for the forward pass).
    """
    zs_BTV = forward({**params, **frozen}, cfg, batch["tokens_BT1"][:, :-1])
    tau = dc.temperature
    logq_BTK = jnp.take_along_axis(jax.nn.log_softmax(zs_BTV / tau, axis=-1), batch["top_ids_BTK"], axis=-1)
    logp_BTK = jax.nn.log_softmax(batch["top_logits_BTK"] / tau, axis=-1)
    kl_BT = jnp.sum(jnp.exp(logp_BTK) * (logp_BTK - logq_BTK), axis=-1)
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(zs_BTV, batch["tokens_BT1"][:, 1:])
    w_BT = batch["weights_BT"].astype(jnp.float32)
    per_BT = dc.kl_weight * tau ** 2 * kl_BT + dc.ce_weight * ce_BT
    return (per_BT * w_BT).sum() / jnp.maximum(w_BT.sum(), 1.0)


def _rows(arrays: dict, idx) -> dict:
    return {k: jnp.asarray(v[idx]) for k, v in arrays.items()}


def distill_prebuilt(params, cfg, frozen, train_arrays: dict, val_arrays: dict, tc: TrainConfig,
                     dc: Optional[DistillConfig] = None, name: str = "draft", loss_fn: Optional[Callable] = None):
    """Train `params` (the draft minus `frozen`) with `topk_distill_loss` on precomputed arrays.

    train_arrays / val_arrays: the batch fields of topk_distill_loss with a leading row axis; each
    step draws tc.batch_size rows at random (the rows of step s depend only on (tc.seed, s), so a
    resumed run sees the same batches). AdamW as infer.train.train.make_optimizer, a tqdm bar,
    validation loss every tc.eval_every steps, an orbax CheckpointManager in tc.run_dir (params +
    optimizer state: an interrupted run resumes). Returns (params, log records); the log is also
    appended to tc.run_dir/log.jsonl. loss_fn(params, batch) replaces topk_distill_loss (then dc is unused).
    """
    tx = make_optimizer(tc)
    opt_state = tx.init(params)
    mngr, start, params, opt_state = open_run(tc.run_dir, params, opt_state)
    if loss_fn is None:
        loss_fn = lambda p, b: topk_distill_loss(p, cfg, frozen, b, dc)

    step_fn = make_train_step(tx, loss_fn)
    eval_fn = jax.jit(loss_fn)

    def val_loss(params):
        n = len(val_arrays["tokens_BT1"])
        losses = [float(eval_fn(params, _rows(val_arrays, slice(i, i + tc.batch_size))))
                  for i in range(0, n, tc.batch_size)]
        return float(np.mean(losses))

    n_rows = len(train_arrays["tokens_BT1"])
    log_path, records = os.path.join(tc.run_dir, "log.jsonl"), []
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, mininterval=5, desc=name)
    t_start = time.perf_counter()
    for step in bar:
        idx = np.random.default_rng([tc.seed, step]).choice(n_rows, tc.batch_size, replace=False)
        params, opt_state, loss, gnorm = step_fn(params, opt_state, _rows(train_arrays, idx))
        done = step + 1
        if done % 10 == 0 or done == tc.steps:
            rec = {"step": done, "loss": float(loss), "grad_norm": float(gnorm),
                   "elapsed_s": time.perf_counter() - t_start}
            bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False)
            if done % tc.eval_every == 0 or done == tc.steps:
                rec["val_loss"] = val_loss(params)
                bar.write(f"step {done}: train loss {rec['loss']:.4f}, val loss {rec['val_loss']:.4f}")
            records.append(rec)
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if done % tc.ckpt_every == 0 or done == tc.steps:
            mngr.save(done, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))
    mngr.wait_until_finished()
    return params, records


def main(argv=None):
    ap = argparse.ArgumentParser(description="Distil the draft model from the target.")
    ap.add_argument("--config", default="draft", help="configs/train/<name>.yaml or a path")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--run-dir", default=None, help="override train.run_dir")
    ap.add_argument("--export-dir", default=None, help="override train.export_dir")
    ap.add_argument("--teacher", default=None, help="override distill.teacher")
    a = ap.parse_args(argv)
    rc = load_run_config(a.config)
    if rc.distill is None:
        raise SystemExit(f"{a.config}: no `distill` section (teacher path, temperature, loss weights)")
    over = {k: v for k, v in (("steps", a.steps), ("run_dir", a.run_dir), ("export_dir", a.export_dir)) if v is not None}
    if over:
        rc = dataclasses.replace(rc, train=dataclasses.replace(rc.train, **over))
    if a.teacher is not None:
        rc = dataclasses.replace(rc, distill=dataclasses.replace(rc.distill, teacher=a.teacher))
    tcfg, tparams = load_model(rc.distill.teacher)
    if tcfg.vocab_size != rc.model.vocab_size:
        raise SystemExit(f"model.vocab_size: draft {rc.model.vocab_size} != teacher {tcfg.vocab_size}")
    cfg, dc = rc.model, rc.distill
    train_loop(rc, lambda p, w, teacher: distill_loss(p, cfg, teacher, tcfg, w, dc), extra=tparams)


if __name__ == "__main__":
    main()
