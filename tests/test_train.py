"""Training pieces: the corpus split, config validation, distillation loss, and resuming an interrupted run."""
import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.config.model_config import ConfigError, ModelConfig
from infer.model.params import init_params
from infer.train import corpus, data
from infer.train.config import DistillConfig, RunConfig, TrainConfig, load_run_config
from infer.train.distill import distill_loss
from infer.train.train import lm_loss, train_loop


def test_split_is_by_file_and_deterministic():
    files = corpus.list_files()
    assert files == sorted(files) and len(files) > 100
    a = [corpus.split_of(f, 0.05) for f in files]
    assert a == [corpus.split_of(f, 0.05) for f in reversed(files)][::-1]  # order-independent
    assert 0.01 < a.count("val") / len(a) < 0.12


def test_train_config_errors_name_the_field():
    base = dict(steps=10, batch_size=2, seq_len=8, peak_lr=1e-3, warmup_steps=2)
    TrainConfig(**base)
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        TrainConfig(**{**base, "warmup_steps": 10})
    with pytest.raises(ConfigError, match="train.peak_lr"):
        TrainConfig(**{**base, "peak_lr": 0.0})
    with pytest.raises(ConfigError, match="distill.temperature"):
        DistillConfig(teacher="x", temperature=0)
    for name in ("target", "draft", "target_gpu"):
        load_run_config(name)


def _tiny(**kw):
    return ModelConfig(vocab_size=4096, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64,
                       max_seq_len=64, dtype="float32", **kw)


def test_distill_loss_against_numpy():
    cfg = _tiny()
    s, t = init_params(cfg, jax.random.PRNGKey(0)), init_params(cfg, jax.random.PRNGKey(1))
    w = np.random.default_rng(0).integers(0, 4096, size=(2, 9)).astype(np.int32)
    dc = DistillConfig(teacher="-", temperature=2.0, kl_weight=1.0, ce_weight=0.5)
    got = float(distill_loss(s, cfg, t, cfg, jnp.asarray(w), dc))
    from infer.model.forward import forward
    zs = np.asarray(forward(s, cfg, jnp.asarray(w[:, :-1])), np.float64)
    zt = np.asarray(forward(t, cfg, jnp.asarray(w[:, :-1])), np.float64)
    lsm = lambda z: z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    pt = np.exp(lsm(zt / 2))
    kl = (pt * (lsm(zt / 2) - lsm(zs / 2))).sum(-1).mean()
    ce = -np.take_along_axis(lsm(zs), w[:, 1:, None], -1).mean()
    np.testing.assert_allclose(got, 4 * kl + 0.5 * ce, rtol=1e-4)
    assert float(distill_loss(t, cfg, t, cfg, jnp.asarray(w), dataclasses.replace(dc, ce_weight=0.0))) < 1e-5


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path):
    cfg = _tiny()
    tc = TrainConfig(steps=4, batch_size=2, seq_len=16, peak_lr=1e-3, warmup_steps=1, eval_every=4, eval_windows=2,
                     ckpt_every=2, run_dir=str(tmp_path / "a"), export_dir=str(tmp_path / "a_out"))
    loss = lambda p, w, _: lm_loss(p, cfg, w)
    straight = train_loop(RunConfig(cfg, tc, name="t"), loss)
    tc_c = dataclasses.replace(tc, run_dir=str(tmp_path / "c"), export_dir=str(tmp_path / "c_out"))
    full = train_loop(RunConfig(cfg, tc_c, name="t"), loss)
    shutil.rmtree(tmp_path / "c" / "4")  # drop the last checkpoint: the run "stopped" after step 2
    # Different initial parameters: only a real restore of step 2 (params + optimizer state) ends equal to `full`.
    other_init = init_params(cfg, jax.random.PRNGKey(99))
    resumed = train_loop(RunConfig(cfg, tc_c, name="t"), loss, init=other_init)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same config, same run
