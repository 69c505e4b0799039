"""The HF loader refuses what it cannot load, and says exactly what is wrong.

Also: real published config.json files translate to the same shapes as our
hand-written configs/models/*.yaml (written independently from the model cards).
"""
import json
import os
import shutil

import pytest
from safetensors.numpy import load_file, save_file

import hf_fixtures as hf
import infer
from infer.io.hf_config import HFConfigError, hf_to_model_config
from infer.io.hf_loader import CheckpointError
from infer.io.safetensors_io import SafetensorsError

# Published config.json files (transformers 4.x layout: top-level rope_theta + rope_scaling).
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}
MISTRAL_7B_V01 = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000}
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064}


@pytest.mark.parametrize("hf_cfg, ours", [(LLAMA31_8B, "llama3.1-8b"), (MISTRAL_7B_V01, "mistral-7b"),
                                          (QWEN25_7B, "qwen2.5-7b")])
def test_published_configs_match_our_model_configs(hf_cfg, ours):
    got = hf_to_model_config(hf_cfg)
    want = infer.load_config(ours)
    # max_seq_len: our YAMLs pick a serving length; config.json states the trained maximum.
    assert got.replace(name="", max_seq_len=1) == want.replace(name="", max_seq_len=1)


def _cfg(**kw):
    d = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    d.update(kw)
    return d


@pytest.mark.parametrize("d, needle", [
    (_cfg(model_type="gpt2"), "unknown architecture 'gpt2'"),
    (_cfg(architectures=["GPT2LMHeadModel"]), "GPT2LMHeadModel"),
    (_cfg(rope_scaling={"rope_type": "dynamic", "factor": 4.0}), "unsupported rope scaling type 'dynamic'"),
    (_cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "original_max_position_embeddings: missing"),
    (_cfg(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}), "'dynamic'"),
    (_cfg(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling.low_freq_factor"),
    (_cfg(attention_bias=True), "attention_bias"),
    (_cfg(mlp_bias=True), "mlp_bias"),
    (_cfg(hidden_act="gelu"), "hidden_act"),
    (_cfg(sliding_window=16), "sliding_window"),
    (_cfg(quantization_config={"quant_method": "gptq"}), "quantization_config"),
    (_cfg(num_hidden_layers=None), "num_hidden_layers: missing"),
    (_cfg(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (_cfg(model_type="qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1),
     "per-layer mix of sliding and full attention"),
])
def test_unsupported_config_is_refused_by_name(d, needle):
    with pytest.raises(HFConfigError) as e:
        hf_to_model_config(d)
    assert needle in str(e.value)


def test_qwen_sliding_window_follows_use_sliding_window_and_layers():
    q = lambda **kw: hf_to_model_config(_cfg(model_type="qwen2", sliding_window=16, **kw)).sliding_window
    assert q(use_sliding_window=False, max_window_layers=0) is None  # the usual Qwen2.5 config: window off
    assert q(use_sliding_window=True, max_window_layers=0) == 16  # every layer slides
    assert q(use_sliding_window=True, max_window_layers=2) is None  # no layer index >= 2
    assert q(use_sliding_window=True, layer_types=["sliding_attention"] * 2) == 16


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    return hf.save(hf.build_model("llama3_rope_gqa", seed=1), str(tmp_path_factory.mktemp("good")))


def _copy(src, tmp_path, name="ckpt"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(path, fn):
    f = os.path.join(path, "model.safetensors")
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f)


def _edit_config(path, **kw):
    with open(os.path.join(path, "config.json")) as f:
        d = json.load(f)
    d.update(kw)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(d, f)


def test_missing_tensor_is_named(good_ckpt, tmp_path):
    p = _copy(good_ckpt, tmp_path)
    _edit_tensors(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        infer.load_hf_checkpoint(p)


def test_untied_model_without_lm_head_is_refused(good_ckpt, tmp_path):
    p = _copy(good_ckpt, tmp_path)
    _edit_tensors(p, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'lm_head\.weight'"):
        infer.load_hf_checkpoint(p)


def test_shape_mismatch_names_tensor_and_both_shapes(good_ckpt, tmp_path):
    p = _copy(good_ckpt, tmp_path)
    _edit_config(p, intermediate_size=96)
    with pytest.raises(CheckpointError) as e:
        infer.load_hf_checkpoint(p)
    msg = str(e.value)
    assert "model.layers.0.mlp.gate_proj.weight" in msg and "[128, 64]" in msg and "[96, 64]" in msg


def test_unexpected_tensor_is_refused_not_dropped(good_ckpt, tmp_path):
    import numpy as np
    p = _copy(good_ckpt, tmp_path)
    _edit_tensors(p, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.ones(64, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.o_proj\.bias'"):
        infer.load_hf_checkpoint(p)


def test_truncated_safetensors_file_is_refused(good_ckpt, tmp_path):
    p = _copy(good_ckpt, tmp_path)
    f = os.path.join(p, "model.safetensors")
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(SafetensorsError, match="truncated") as e:
        infer.load_hf_checkpoint(p)
    assert f in str(e.value)


def test_missing_shard_is_named(tmp_path):
    p = hf.save(hf.build_model("llama3_rope_gqa", seed=2), str(tmp_path / "sharded"), max_shard_size="40KB")
    with open(os.path.join(p, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[1]
    os.remove(os.path.join(p, shard))
    with pytest.raises(CheckpointError, match=f"{shard}: shard listed in model.safetensors.index.json is missing"):
        infer.load_hf_checkpoint(p)


def test_missing_config_json(good_ckpt, tmp_path):
    p = _copy(good_ckpt, tmp_path)
    os.remove(os.path.join(p, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        infer.load_hf_checkpoint(p)
