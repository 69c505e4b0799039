"""Orbax save/restore: bit-exact round trip with the config, clear errors for damaged or mismatched checkpoints."""
import json
import os

import jax
import numpy as np
import pytest

import infer
from infer.io.checkpoint import CONFIG_FILE, PARAMS_DIR
from infer.config.model_config import RopeScaling


def _cfg(**kw):
    base = dict(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48,
                max_seq_len=128, dtype="bfloat16")
    base.update(kw)
    return infer.ModelConfig(**base)


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("cfg", [
    _cfg(),
    _cfg(dtype="float32", qkv_bias=True, qk_norm=True, tie_embeddings=True, sliding_window=16, rope_theta=5e5,
         rope_scaling=RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=64), norm_eps=1e-6,
         name="every-field"),
], ids=["bf16", "f32-every-field"])
def test_round_trip_is_bit_exact_and_carries_the_config(cfg, tmp_path):
    params = infer.init_params(cfg, jax.random.PRNGKey(3))
    infer.save_checkpoint(str(tmp_path / "ck"), cfg, params)
    cfg2, params2 = infer.load_checkpoint(str(tmp_path / "ck"))
    assert cfg2 == cfg
    assert jax.tree_util.tree_structure(params2) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(_bits_equal, params, params2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = _cfg()
    path = str(tmp_path_factory.mktemp("saved") / "ck")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    infer.save_checkpoint(path, cfg, params)
    return cfg, path, params


def _copy(path, tmp_path):
    import shutil
    dst = str(tmp_path / "copy")
    shutil.copytree(path, dst)
    return dst


def _data_files(path):
    out = []
    for root, _, files in os.walk(os.path.join(path, PARAMS_DIR)):
        out += [os.path.join(root, f) for f in files if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep]
    return sorted(out, key=os.path.getsize)


def test_truncated_weights_fail_with_the_path(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    biggest = _data_files(p)[-1]
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    with pytest.raises(infer.CheckpointError, match="damaged or incomplete") as e:
        infer.load_checkpoint(p)
    assert os.path.join(p, PARAMS_DIR) in str(e.value)


def test_deleted_weights_fail_with_the_path(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    for f in _data_files(p):
        os.remove(f)
    with pytest.raises(infer.CheckpointError, match=os.path.join(p, PARAMS_DIR)):
        infer.load_checkpoint(p)


def test_missing_config_or_params_dir(saved, tmp_path):
    import shutil
    p = _copy(saved[1], tmp_path)
    shutil.rmtree(os.path.join(p, PARAMS_DIR))
    with pytest.raises(infer.CheckpointError, match="has a config but no weights"):
        infer.load_checkpoint(p)
    os.remove(os.path.join(p, CONFIG_FILE))
    with pytest.raises(infer.CheckpointError, match=f"{CONFIG_FILE}: missing"):
        infer.load_checkpoint(p)
    with pytest.raises(infer.CheckpointError, match="no such checkpoint directory"):
        infer.load_checkpoint(str(tmp_path / "nowhere"))


def _edit_config(path, **changes):
    f = os.path.join(path, CONFIG_FILE)
    with open(f) as fh:
        d = json.load(fh)
    d["model_config"].update(changes)
    with open(f, "w") as fh:
        json.dump(d, fh)


def test_config_weights_shape_mismatch_names_tensor_and_shapes(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    _edit_config(p, d_ff=64)
    with pytest.raises(infer.CheckpointError) as e:
        infer.load_checkpoint(p)
    msg = str(e.value)
    assert "'layers/mlp/down/kernel'" in msg and "[2, 48, 32]" in msg and "[2, 64, 32]" in msg


def test_config_weights_tree_and_dtype_mismatch(saved, tmp_path):
    p = _copy(saved[1], tmp_path)
    _edit_config(p, qkv_bias=True)
    with pytest.raises(infer.CheckpointError, match="missing tensor 'layers/attn/k/bias'"):
        infer.load_checkpoint(p)
    _edit_config(p, qkv_bias=False, dtype="float32")
    with pytest.raises(infer.CheckpointError, match="'embed/embedding': dtype mismatch: checkpoint has bfloat16"):
        infer.load_checkpoint(p)


def test_save_refuses_params_that_do_not_match_cfg_and_existing_dirs(saved, tmp_path):
    cfg, path, params = saved
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["layers"]["mlp"]["down"]["kernel"] = np.zeros((2, 40, 32), np.dtype("bfloat16"))
    msg = r"'layers/mlp/down/kernel': shape mismatch: params have \[2, 40, 32\], config implies \[2, 48, 32\]"
    with pytest.raises(infer.CheckpointError, match=msg):
        infer.save_checkpoint(str(tmp_path / "bad"), cfg, params)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        infer.save_checkpoint(path, cfg, saved[2])
