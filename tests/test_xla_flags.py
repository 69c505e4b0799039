"""infer/config/xla_flags.py: the XLA flags `import infer` asks for, and what it leaves alone."""
import os
import subprocess
import sys

from infer.config.xla_flags import OPT_OUT, apply_default_xla_flags, default_flags


def test_avx512_machines_get_512_bit_vectors_and_others_nothing():
    assert default_flags({"avx2", "avx512f"}) == {"xla_cpu_prefer_vector_width": "512"}
    assert default_flags({"avx2", "fma"}) == {}


def test_appends_without_overriding_the_callers_flags_and_honours_the_opt_out():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert apply_default_xla_flags(env, {"avx512f"}) == \
        "--xla_force_host_platform_device_count=8 --xla_cpu_prefer_vector_width=512"
    assert apply_default_xla_flags(env, {"avx512f"}) == env["XLA_FLAGS"]  # idempotent: not appended twice
    mine = {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}
    assert apply_default_xla_flags(mine, {"avx512f"}) == "--xla_cpu_prefer_vector_width=256"
    assert apply_default_xla_flags({}, {"avx2"}) == "" and apply_default_xla_flags({OPT_OUT: "1"}, {"avx512f"}) == ""


def test_import_infer_sets_them_before_the_backend_and_jax_accepts_them():
    # a fresh process: the flags reach XLA (an unknown flag would abort the backend's start) and a step runs
    code = ("import os, infer, jax, jax.numpy as jnp; from infer.config.xla_flags import default_flags; "
            "flags = os.environ.get('XLA_FLAGS', ''); "
            "assert all(f'--{k}={v}' in flags for k, v in default_flags().items()), flags; "
            "print(float((jnp.ones((1, 576)) @ jnp.ones((576, 8)))[0, 0]))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "576.0"
