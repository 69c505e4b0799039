"""The GPU program report (infer/perf/gpu_program.py): the thunk-sequence reader on a hand-written dump, and what our
programs launch on an H100, compiled on this CPU-only machine (tests/gpu_aot.py)."""
import pytest
from gpu_aot import h100_sharding

import infer
from infer.perf import gpu_program
from infer.perf.thunks import parse_annotations, parse_hlo, parse_layer_ops, parse_thunks, summarize

# A loop of 3 trips whose body copies a weight slice (a dynamic-slice fusion) and runs a GEMM and a kernel, a command
# buffer of two kernels after it, and a transpose before it; shapes from the HLO, trip count from the while.
THUNKS = """\
001: kCustomKernel [source | next=002 (1)] wrapped_transpose grid: [64, 1, 1]
002: kWhile        [prev=001 (1) | next=000 (1)]
condition:
    003: kCustomKernel [source | sink] loop_compare_fusion grid: [1, 1, 1]
  body:
    004: kDynamicSliceFusion [source | next=006 (1)] params=1, results=1
        005: kCopy [source | sink] kCopy
    006: kCustomKernel [prev=004 (1) | next=007 (1)] gemm_fusion_dot grid: [8, 1, 1]
    007: kCustomKernel [prev=006 (1) | sink] decode_attn_paged_G4 grid: [1, 8, 4]
000: kCommandBuffer [prev=002 (1) | sink]
    008: kCustomKernel [source | next=009 (1)] loop_multiply_fusion grid: [4, 1, 1]
    009: kGemm [prev=008 (1) | sink] custom-call.1
"""
META = "".join(f'thunk_metadata {{\n  thunk_info {{\n    profile_annotation: "{a}"\n    thunk_id: {i}\n  }}\n}}\n'
               for i, a in [(1, "wrapped_transpose"), (2, "while.3"), (4, "wrapped_dynamic-slice"), (5, "copy.7"),
                            (6, "gemm_fusion_dot"), (8, "loop_multiply_fusion")])
HLO = """\
  %wrapped_transpose = bf16[4,64,32]{2,1,0} fusion(%p0), kind=kInput, calls=%t
  ROOT %copy.7 = bf16[1,64,32]{2,1,0} copy(%dynamic_slice.2)
  %gemm_fusion_dot = bf16[1,32]{1,0} fusion(%a, %b), kind=kCustom, calls=%g
  %loop_multiply_fusion = (f32[16,32]{1,0}, f32[16]{0}) fusion(%x), kind=kLoop, calls=%m
  %while.3 = (s32[], bf16[4,64,32]{2,1,0}) while(%tuple), condition=%c, body=%b, backend_config={"known_trip_count":{"n":"3"}}
"""


def test_the_reader_counts_each_loop_trip_and_each_copys_bytes():
    shapes, trips = parse_hlo(HLO)
    assert trips == {"while.3": 3} and shapes["copy.7"][1] == 64 * 32 * 2
    rep = summarize(parse_thunks(THUNKS), parse_annotations(META), shapes, trips)
    # transpose 1 + condition 4 + body 3 x (slice copy, GEMM, kernel) + command buffer's 2
    assert rep.launches == 1 + 4 + 9 + 2
    assert rep.kernels == {"xla": 1 + 4 + 1, "triton_gemm": 3, "pallas": 3, "cublas": 1}
    assert rep.submissions == 1 + 4 + 9 + 1 and rep.command_buffers == 1 and rep.loops == [3]
    assert [(c.op, c.bytes, c.runs) for c in rep.copies] == [("wrapped_transpose", 4 * 64 * 32 * 2, 1),
                                                             ("copy.7", 64 * 32 * 2, 3)]
    assert rep.copy_bytes == 4 * 64 * 32 * 2 + 3 * 64 * 32 * 2
    assert rep.largest_f32 == ("loop_multiply_fusion (f32[16,32]{1,0}, f32[16]{0})", (16 * 32 + 16) * 4)


LAYER_HLO = """\
%gemm_fusion_dot.5_computation (p0: bf16[8,16], p1: bf16[16]) -> f32[8] {
  %dot.1 = f32[8]{0} dot(%p0, %p1), metadata={op_name="jit(step)/Decoder/layers_3/attn/qkv/dot_general"}
}

ENTRY %main.1 (p: bf16[8,16]) -> f32[8] {
  %gemm_fusion_dot.5 = f32[8]{0} fusion(%p, %q), kind=kCustom, calls=%gemm_fusion_dot.5_computation
  %pallas_call.7 = bf16[16]{0} custom-call(%x), metadata={op_name="jit(step)/Decoder/layers/while/body/mlp_norm/pallas_call"}
  %loop_add_fusion = bf16[16]{0} fusion(%a), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/Decoder/final_norm/add"}
  %copy.2 = s32[1]{0} copy(%n)
}
"""


def test_the_reader_tells_a_layers_launches_from_the_rest():
    """A launch belongs to a layer when its op (or, for a GEMM fusion, the dot inside) came from a `layers_{i}`
    block or the `layers` scan; the final norm and a bookkeeping copy do not."""
    ops = parse_layer_ops(LAYER_HLO)
    assert {"gemm_fusion_dot.5", "pallas_call.7"} <= ops and not {"loop_add_fusion", "copy.2"} & ops


BRANCH_THUNKS = """\
001: kCustomKernel [source | next=002 (1)] loop_reduce_fusion grid: [1, 1, 1]
002: kConditional  [prev=001 (1) | sink]
  false_branch:
    003: kCustomKernel [source | next=004 (1)] input_reduce_fusion grid: [8, 1, 1]
    004: kCustomKernel [prev=003 (1) | sink] loop_select_fusion grid: [8, 1, 1]
  true_branch:
    005: kCustomKernel [source | sink] loop_argmax_fusion grid: [1, 1, 1]
"""


def test_the_reader_counts_a_conditionals_branches_apart():
    """Every branch of a conditional is in the launch count (the program holds them all) and in branch_launches
    (only the taken one runs: an all-greedy batch skips the top-k / top-p search)."""
    rep = summarize(parse_thunks(BRANCH_THUNKS), {}, {}, {})
    assert rep.launches == 4 and rep.branch_launches == 3


@pytest.fixture(scope="module")
def llama():
    h100_sharding()  # skips (or, under CI, fails) without the compiler
    return infer.load_config("llama3-8b").replace(dtype="bfloat16")


@pytest.mark.parametrize("batch", [1, 64])
def test_llama3_8b_decode_for_a_gpu_copies_no_weight(llama, batch, tmp_path):
    """In the layout the stack picks for a GPU (unrolled), a decode step copies no weight; the stacked layer scan
    copies every layer's slices (13.96 GB per step: what held the H200 run to 1.0 TB/s), so the check can fail.
    Batch 64 compiles 4 of the 32 layers (the program repeats per layer; the compile is 8x shorter)."""
    cfg = llama if batch == 1 else llama.replace(n_layers=4)
    spec = gpu_program.ProgramSpec(cfg, "auto", batch, 1024)
    row = gpu_program.report_row("decode", spec, gpu_program.compile_report("decode", spec, dump_dir=str(tmp_path)))
    assert row["weight_copies"] == 0 and row["weight_copy_GB"] == 0, row
    if batch == 1:
        # per layer: the attention kernel, the KV write (keys rotated in it) and the four projections as decode
        # GEMV kernels (pallas_kernels/gemv/: q|k|v and gate|up with the layer's add + RMSNorm folded in, gate|up
        # with SwiGLU); the final norm's add + RMSNorm and the LM head's GEMV
        assert row["kernels_pallas"] == 6 * cfg.n_layers + 2 and not row.get("kernels_triton_gemm"), row
        # 8 kernels of a layer's own (the 6 above, the attention splits' merge in 2; the KV write rotates the
        # queries too), plus the step's rope tables and metadata counted in the first layer; 9.22 with the queries'
        # rotation its own fusion, 15.19 with XLA's split-K GEMMs and their reductions, 18.25 before the KV write
        # and the cross-block norm kernels
        assert row["launches_per_layer"] <= 8.5, row
        assert _gemv_grids_fit_one_wave(tmp_path)
    else:
        # 64 rows: the four projections as GEMV kernels too (64-row tiles; gate|up with SwiGLU), the two add +
        # RMSNorm kernels before them (the GEMV's norm prologue stops at 16 rows), the attention kernel (one split
        # at B*K = 512 programs: it writes the normalised output itself, no merge) and the KV write; the final
        # norm's and the LM head's GEMV
        assert row["kernels_pallas"] == 8 * cfg.n_layers + 2 and not row.get("kernels_triton_gemm"), row
        # the 8 above, a layer's own (the KV write rotates the queries too), plus the step's rope tables and
        # metadata (1.25 per layer over the 4 compiled); 14.09 with XLA's split-K GEMMs, their reductions, the q
        # pad, the merge and the queries' rotation
        assert row["launches_per_layer"] <= 9.5, row
        assert _gemv_grids_fit_one_wave(tmp_path)
    assert row["largest_f32_MB"] <= batch * cfg.vocab_size * 4 / 1e6  # no float32 buffer beyond the logits
    assert row["command_buffers"] == 1 and row["submissions"] == 1  # the whole step: one CUDA graph
    if batch == 1:
        stacked = gpu_program.ProgramSpec(llama, "stacked", batch, 1024)
        srow = gpu_program.report_row("decode", stacked, gpu_program.compile_report("decode", stacked))
        # (fused projections: qkv, o, gate_up, down sliced out of the stack per layer)
        assert srow["weight_copies"] >= 4 * llama.n_layers and srow["weight_copy_GB"] > 13, srow


H100_SMS, H100_SMEM_PER_SM = 132, 228 * 1024


def _gemv_grids_fit_one_wave(dump):
    """Every GEMV kernel of a layer (grids of one or two programs per SM; the LM head's 2004 run in many waves)
    has all its programs resident at once on an H100, no second, partly empty wave: grid <= SMs x the programs
    one SM holds by shared memory (compiled sizes, from the thunk sequence)."""
    import glob
    import re
    text = "".join(open(f).read() for f in glob.glob(f"{dump}/**/*thunk_sequence_after_thunk_passes.txt",
                                                     recursive=True))
    found = re.findall(r"(gemv\S*) grid: \[(\d+), 1, 1\].*?shared_memory: (\d+)", text)
    assert found, "no GEMV kernel in the dump"
    for name, grid, smem in found:
        assert int(grid) > 2 * H100_SMS or int(grid) <= H100_SMS * (H100_SMEM_PER_SM // max(int(smem), 1)), (name, grid, smem)
    return True


def test_smollm2_decode_for_a_gpu_runs_its_projections_as_gemv_kernels(llama):
    """SmolLM2-135M at batch 1: every projection a GEMV kernel, both norms folded into them (D = 576 is no Triton
    row for the add + RMSNorm kernel, but the GEMV's norm loops over K chunks); 14.27 launches per layer before the GEMV,
    9.23 before the KV write rotated the queries."""
    spec = gpu_program.ProgramSpec(infer.load_config("smollm2-135m").replace(dtype="bfloat16"), "auto", 1, 512)
    row = gpu_program.report_row("decode", spec, gpu_program.compile_report("decode", spec))
    assert row["weight_copies"] == 0 and row["launches_per_layer"] <= 8.5, row
    assert row["kernels_pallas"] == 6 * spec.cfg.n_layers, row  # tied embeddings: the logits are XLA's GEMM


@pytest.mark.parametrize("program", ["engine_decode", "engine_mixed"])
def test_the_engines_steps_for_a_gpu_copy_no_weight_and_run_as_one_graph(llama, program):
    """Llama 3 8B's shapes, 4 of its layers (the step repeats per layer)."""
    cfg = llama.replace(n_layers=4)
    spec = gpu_program.ProgramSpec(cfg, "auto", 8, 1024)
    row = gpu_program.report_row(program, spec, gpu_program.compile_report(program, spec))
    assert row["weight_copies"] == 0 and row["weight_copy_GB"] == 0, row
    assert row["kernels_pallas"] >= cfg.n_layers
    assert row["submissions"] == 1  # page copies, step and sampling (its conditionals too): one CUDA graph


def test_smollm2s_generation_loop_is_one_command_buffer_on_a_gpu(llama):
    """The on-device loop (every token's step, sampling and stop checks) is one CUDA graph: one host submission
    per call, where XLA's default command buffers left 346 submissions per token (the loop body outside)."""
    spec = gpu_program.ProgramSpec(infer.load_config("smollm2-135m").replace(dtype="bfloat16"), "auto", 1, 512)
    rep = gpu_program.compile_report("generate", spec)
    assert rep.submissions == 1 and rep.command_buffers == 1, rep.summary()
    # its one-row projections stay GEMMs (layers/linear.py pads the row): no float32 weight-sized product
    # (90 per token, 0.18 GB, before)
    row = gpu_program.report_row("generate", spec, rep)
    assert row["weight_copies"] == 0 and row["largest_f32_MB"] < 1, row
    # inside, once per layer: the decode attention kernel, the KV write and the four projections' GEMV kernels (the
    # norms folded into q|k|v's and gate|up's)
    assert rep.kernels["pallas"] == 6 * spec.cfg.n_layers


def test_gpu_checks_program_stage_writes_the_report(llama, tmp_path):
    """make gpu-check's program stage at CPU size (the deviceless H100 target only): its table lands in the summary."""
    import json

    from infer.bench import gpu_check
    assert gpu_check.main(["--size", "cpu", "--out", str(tmp_path), "--stages", "program"]) == 0
    rows = json.loads((tmp_path / "program" / "report.json").read_text())
    assert [(r["program"], r["target"]) for r in rows] == [("decode", "h100"), ("engine_decode", "h100"),
                                                           ("generate", "h100")]
    assert all(r["kernels_pallas"] >= 2 and r["launches_per_step"] > 0 for r in rows)  # tiny: 2 layers
    assert "## program: `infer.perf.gpu_program`" in (tmp_path / "summary.md").read_text()


def test_a_one_row_projection_padded_for_a_gpu_computes_the_same(monkeypatch):
    """With the decode GEMV kernel off (INFER_DECODE_GEMV=0: XLA's GEMMs), layers/linear.py pads a one-row input to
    two rows on a GPU target (so XLA keeps the dot a GEMM); traced for a GPU on this CPU, the result is the
    unpadded one's."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from layers.linear import Linear
    from pallas_kernels.platform import target_platform
    lin = Linear((64,), (4, 16), ("embed",), (None, None), jnp.float32)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 1, 64)), jnp.float32)
    params = lin.init(jax.random.PRNGKey(0), x)
    want = lin.apply(params, x)
    monkeypatch.setenv("INFER_DECODE_GEMV", "0")
    with target_platform("gpu"):
        jaxpr = str(jax.make_jaxpr(lambda p, x: lin.apply(p, x))(params, x))
        got = jax.jit(lambda p, x: lin.apply(p, x))(params, x)
    assert "pad" in jaxpr and got.shape == (1, 1, 4, 16)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_an_moe_decode_step_for_a_gpu_reads_the_picked_experts_in_place(llama):
    """Qwen3-30B-A3B's shapes (2 of its 48 layers), batch 1: the 8 picked experts' gate|up (SwiGLU) and down run as
    expert GEMV kernels reading the stacked [E, K, N] weights by the router's ids, so no expert weight is gathered
    into a copy (XLA's gather + transpose copied 25 MB per layer, 1.21 GB per step at 48 layers)."""
    cfg = infer.load_config("qwen3-30b-a3b").replace(n_layers=2)
    spec = gpu_program.ProgramSpec(cfg, "auto", 1, 512)
    row = gpu_program.report_row("decode", spec, gpu_program.compile_report("decode", spec))
    assert row["weight_copies"] == 0 and row["weight_copy_GB"] == 0, row
    assert not row.get("kernels_triton_gemm"), row  # no XLA GEMM left in a layer (the LM head is a GEMV too)
