"""One knob per dtype setting: every dtype argument takes a name, a JAX dtype or a numpy dtype alike
(infer/config/dtypes.py's dtype_name), and the KV cache dtypes are one constant that the CLIs reuse."""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_fixtures as hf
import infer
from infer.cli.main import main
from infer.cli.serve import add_serve_args
from infer.config import DTYPES, KV_CACHE_DTYPES, dtype_name
from infer.io.dtype_policy import load_dtype


@pytest.mark.parametrize("given, name", [("bfloat16", "bfloat16"), (jnp.bfloat16, "bfloat16"), (np.float32, "float32"),
                                         (np.dtype("float16"), "float16"), (jnp.int8, "int8"), (None, None)])
def test_dtype_name(given, name):
    assert dtype_name(given) == name


def test_model_config_keeps_the_name_of_a_jax_or_numpy_dtype():
    cfg = infer.load_config("tiny")
    by_dtype = cfg.replace(dtype=jnp.bfloat16, kv_cache_dtype=jnp.int8)
    by_name = cfg.replace(dtype="bfloat16", kv_cache_dtype="int8")
    assert (by_dtype.dtype, by_dtype.kv_cache_dtype) == ("bfloat16", "int8")
    assert by_dtype == by_name and hash(by_dtype) == hash(by_name)  # the same static jit argument
    with pytest.raises(infer.ConfigError, match="kv_cache_dtype"):
        cfg.replace(kv_cache_dtype=jnp.int4)
    with pytest.raises(infer.ConfigError, match="dtype"):
        cfg.replace(dtype=object())


def test_pools_and_load_policy_take_dtypes():
    cfg = infer.load_config("tiny")
    kv = infer.init_pools(cfg, 2, 4, dtype=jnp.int8)
    assert kv["k"].dtype == jnp.int8 and "k_scale" in kv
    assert load_dtype("bfloat16", np.float16) == "float16"


def test_load_hf_checkpoint_takes_a_jax_dtype(tmp_path):
    path = hf.save(hf.build_model("llama3_rope_gqa", seed=1), str(tmp_path / "ckpt"))
    cfg, params = infer.load_hf_checkpoint(path, dtype=jnp.bfloat16)
    assert cfg.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_the_clis_offer_the_config_dtypes(capsys):
    p = argparse.ArgumentParser()
    add_serve_args(p)
    choices = {a.dest: a.choices for a in p._actions}
    assert tuple(choices["kv_cache_dtype"]) == KV_CACHE_DTYPES and tuple(choices["dtype"]) == DTYPES
    with pytest.raises(SystemExit):
        main(["generate", "--kv-cache-dtype", "int4"])
    err = capsys.readouterr().err
    assert "int4" in err and all(d in err.split("choose from", 1)[1] for d in KV_CACHE_DTYPES)


def test_engine_has_no_kv_dtype_of_its_own():
    """The KV cache dtype is ModelConfig.kv_cache_dtype only."""
    cfg = infer.load_config("tiny").replace(kv_cache_dtype="int8")
    params = infer.init_params(cfg, jax.random.PRNGKey(0))
    with pytest.raises(TypeError):
        infer.Engine(params, cfg, num_pages=4, kv_dtype="float32")
    assert infer.Engine(params, cfg, num_pages=4).kv["k"].dtype == jnp.int8
