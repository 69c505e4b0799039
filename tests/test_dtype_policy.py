"""The load-time dtype policy: 16-bit checkpoints load as float32 on CPU unless a dtype is asked for.

The rule lives in infer/io/dtype_policy.py; load_model_dir applies it to our checkpoints and to
Hugging Face ones (GGUF already defaults to float32). An explicit dtype is always honoured.
"""
import warnings

import jax
import jax.numpy as jnp
import pytest

import hf_fixtures as hf
import infer
from infer.io.checkpoint import save_checkpoint
from infer.io.dtype_policy import load_dtype

ON_CPU = jax.default_backend() == "cpu"


@pytest.mark.parametrize("stored", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("requested", ["bfloat16", "float16", "float32"])
def test_explicit_dtype_is_honoured_without_a_warning(stored, requested):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dtype(stored, requested, platform="cpu") == requested


@pytest.mark.parametrize("stored", ["bfloat16", "float16"])
def test_default_on_cpu_is_float32_with_the_reason(stored):
    with pytest.warns(UserWarning, match=rf"stored in {stored}.*float32.*backend is CPU.*dtype='{stored}'"):
        assert load_dtype(stored, None, platform="cpu") == "float32"


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_default_elsewhere_keeps_the_stored_dtype(platform):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dtype("bfloat16", None, platform=platform) == "bfloat16"
        assert load_dtype("float32", None, platform="cpu") == "float32"


@pytest.mark.skipif(not ON_CPU, reason="the fallback applies on a CPU backend")
def test_load_model_dir_ours_bf16_defaults_to_float32_on_cpu(tmp_path):
    cfg = infer.load_config("tiny").replace(dtype="bfloat16")
    save_checkpoint(str(tmp_path / "ckpt"), cfg, infer.init_params(cfg, jax.random.PRNGKey(0)))
    with pytest.warns(UserWarning, match="loading it as float32"):
        got_cfg, params = infer.load_model_dir(str(tmp_path / "ckpt"))
    assert got_cfg.dtype == "float32"
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    forced_cfg, forced = infer.load_model_dir(str(tmp_path / "ckpt"), dtype="bfloat16")
    assert forced_cfg.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree_util.tree_leaves(forced)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.skipif(not ON_CPU, reason="the fallback applies on a CPU backend")
def test_load_model_dir_hf_bf16_defaults_to_float32_on_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    path = hf.save(hf.build_model("llama_mha_tied_linear"), str(tmp_path / "hf"), dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="loading it as float32"):
        cfg, params = infer.load_model_dir(path)
    assert cfg.dtype == "float32"
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    cfg, _ = infer.load_model_dir(path, dtype="bfloat16")
    assert cfg.dtype == "bfloat16"
