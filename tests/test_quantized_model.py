"""A quantized model is the float model of its dequantized weights: the only difference is the quantization."""
import jax
import numpy as np
import pytest
from conftest import make_cfg

import infer
from infer.config import SamplingParams
from layers.quant.formats import FORMATS


@pytest.fixture(scope="module")
def model():
    cfg = make_cfg(d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=256, vocab_size=97)  # groups up to 128
    return cfg, infer.init_params(cfg, jax.random.PRNGKey(3))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_quantized_logits_equal_the_float_model_of_the_dequantized_weights(model, fmt):
    cfg, params = model
    qparams, qcfg = infer.quantize(params, cfg, fmt)
    assert qcfg.weight_format == fmt
    q = qparams["layers"]["attn"]["o"]
    assert set(q) == ({"q", "scale", "min"} if FORMATS[fmt].has_min else {"q", "scale"})
    assert q["q"].shape[0] == cfg.n_layers  # still stacked over layers
    twin = infer.dequantize_params(qparams, qcfg)  # a float model holding exactly the stored values
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 12))
    got = np.asarray(infer.forward(qparams, qcfg, tokens))
    want = np.asarray(infer.forward(twin, cfg, tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ref = np.asarray(infer.forward(params, cfg, tokens))
    assert np.abs(got - ref).max() > 1e-4  # the quantization did change something ...
    # ... and the cached ragged step runs the stored format too
    if fmt not in ("int8", "q4_1"):
        return
    sp = SamplingParams(temperature=0.0, max_new_tokens=6)
    assert infer.generate(qparams, qcfg, [[1, 2, 3]], sp).tokens == infer.generate(twin, cfg, [[1, 2, 3]], sp).tokens


def test_quantize_refuses_what_does_not_fit(model):
    cfg, params = model
    with pytest.raises(ValueError, match="weight format 'int3'"):
        infer.quantize(params, cfg, "int3")
    odd = make_cfg(d_model=48)  # 48 inputs: not a multiple of a 32-wide group
    with pytest.raises(ValueError, match="not a multiple of the group size 32"):
        infer.quantize(infer.init_params(odd, jax.random.PRNGKey(0)), odd, "int4-g32")
    qparams, qcfg = infer.quantize(params, cfg, "int8")
    with pytest.raises(ValueError, match="already stored as 'int8'"):
        infer.quantize(qparams, qcfg, "int8")
    with pytest.raises(infer.ConfigError, match="weight_format"):
        cfg.replace(weight_format="fp4")
