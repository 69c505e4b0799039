"""Distil a small draft model from the trained target (for speculative decoding).

    python -m infer.train.distill --config draft

Loss per position (nats), teacher = the shipped target, student = the draft:
    kl_weight * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)) + ce_weight * CE(data, z_s)
The KL term trains the draft on the target's whole next-token distribution, not
only on the data's next token, which is what speculative acceptance rewards.
The teacher's logits are computed on the fly for each batch (teacher frozen).
Everything else (optimizer, schedule, checkpoints, resume) is infer.train.train.
"""
from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import optax

from infer.model.forward import forward
from infer.train.config import load_run_config
from infer.train.shipped import load_model
from infer.train.train import train_loop


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
