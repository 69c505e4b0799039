"""AWQ (infer/model/awq.py): the folded scales leave the float model unchanged, the search never does worse than
round-to-nearest on its calibration objective, and AWQ int4 stays within 1% of float32 perplexity on held-out text
for our own trained target. Whether it beats RTN on held-out text is reported, not asserted: on this 5M model it
depends on the slice (BENCHMARKS.md, quant_bench_target)."""
import glob
import os

import jax
import numpy as np

import infer
from infer.config.paths import REPO_ROOT
from infer.model.awq import awq_quantize, awq_scale
from infer.perf.perplexity import perplexity

TARGET = os.path.join(REPO_ROOT, "models", "target")


def calibration_text() -> str:
    """Python source of this repository's engine (not the held-out slice, not the target's training data)."""
    return "\n\n".join(open(p, encoding="utf-8").read() for p in sorted(glob.glob(
        os.path.join(REPO_ROOT, "infer", "engine", "*.py"))))


def test_awq_scales_keep_the_float_model_and_cost_little_at_int4():
    cfg, params = infer.load_model_dir(TARGET, dtype="float32")
    tok = infer.load_tokenizer(TARGET, vocab_size=cfg.vocab_size)
    calib = np.asarray(tok.encode(calibration_text()), np.int32)
    held_out = np.asarray(tok.encode(open(os.path.join(REPO_ROOT, "models", "val_slice.txt")).read()), np.int32)
    scaled, report = awq_scale(params, cfg, "int4-g32", calib, max_rows=2048)
    toks = held_out[None, :64]
    np.testing.assert_allclose(np.asarray(infer.forward(scaled, cfg, toks)), np.asarray(infer.forward(params, cfg, toks)),
                               rtol=1e-4, atol=1e-4)
    assert any(r["alpha_mlp"] > 0 or r["alpha_attn"] > 0 or r["alpha_down"] > 0 for r in report)
    assert all(min(r["rtn_over_awq_err_attn"], r["rtn_over_awq_err_mlp"], r["rtn_over_awq_err_down"]) >= 1.0
               for r in report)  # alpha = 0 is RTN itself: the search never does worse on calibration data
    f32 = perplexity(params, cfg, held_out, max_windows=4)["ppl"]
    rtn_p, rtn_c = infer.quantize(params, cfg, "int4-g32")
    rtn = perplexity(rtn_p, rtn_c, held_out, max_windows=4)["ppl"]
    awq_p, awq_c = infer.quantize(scaled, cfg, "int4-g32")  # = awq_quantize(params, cfg, "int4-g32", calib)
    awq = perplexity(awq_p, awq_c, held_out, max_windows=4)["ppl"]
    print({"float32": f32, "rtn int4-g32": rtn, "awq int4-g32": awq})
    assert abs(awq / f32 - 1) < 0.01 and abs(rtn / f32 - 1) < 0.01 and awq != rtn


def test_awq_quantize_is_scale_then_round(tiny):
    cfg, params = infer.load_model_dir(TARGET, dtype="float32")
    calib = np.arange(300) % cfg.vocab_size
    qp, qc, report = awq_quantize(params, cfg, "int8", calib, seq_len=64, max_rows=256)
    scaled, report2 = awq_scale(params, cfg, "int8", calib, seq_len=64, max_rows=256)
    want, _ = infer.quantize(scaled, cfg, "int8")
    assert qc.weight_format == "int8" and report == report2
    for a, b in zip(jax.tree_util.tree_leaves(qp), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
