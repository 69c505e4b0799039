"""`import infer` is light: no kernel, no Pallas lowering, no orbax / tensorstore, no server library is loaded
until a name that needs it is used (the package __init__s resolve public names on first use, PEP 562).

Each case runs in a fresh interpreter, since this test process has loaded everything already.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("jax.experimental.pallas", "orbax", "tensorstore", "fastapi", "uvicorn")
KERNEL_PACKAGES = ("pallas_kernels.attention.", "pallas_kernels.matmul.")
# The plain tables infer.config validates against, and the pure-JAX paths the model itself runs on the CPU.
TABLES = ("pallas_kernels.attention.impl_names", "pallas_kernels.matmul.formats")
MODEL_PATHS = TABLES + ("pallas_kernels.matmul.dispatch", "pallas_kernels.matmul.quant_xla",
                        "pallas_kernels.matmul.quant_reference", "pallas_kernels.attention.ragged_reference",
                        "pallas_kernels.attention.decode_reference", "pallas_kernels.attention.mla_reference")


def loaded_after(code):
    """sys.modules' names in a fresh interpreter after running code."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def unwanted(modules, allowed):
    return [m for m in modules
            if any(m == h or m.startswith(h + ".") for h in HEAVY)
            or (m.startswith(KERNEL_PACKAGES) and m not in allowed)]


@pytest.mark.parametrize("code", ["import infer", "import infer.config", "import pallas_kernels.platform"])
def test_import_loads_no_kernel_nor_heavy_library(code):
    modules = loaded_after(code)
    assert unwanted(modules, allowed=()) == []
    if code != "import pallas_kernels.platform":
        assert not [m for m in modules if m.startswith(("layers", "infer.model", "infer.engine", "infer.io"))]


def test_config_validation_reads_only_the_plain_tables():
    modules = loaded_after("import infer\ninfer.load_config('tiny').replace(attention_impl='reference')")
    assert unwanted(modules, allowed=TABLES) == []
    assert not [m for m in modules if m == "layers" or m.startswith("layers.")]


def test_the_model_and_engine_load_no_kernel_until_one_runs():
    """The model's CPU paths (XLA's packed matmul, the attention twins) load; the GPU/TPU kernels do not."""
    modules = loaded_after("from infer import Engine, LLM, generate, quantize, forward, step")
    assert unwanted(modules, allowed=MODEL_PATHS) == []


def test_public_names_still_resolve():
    code = ("import infer, pallas_kernels, pallas_kernels.matmul as pm\n"
            "assert set(infer.__all__) <= set(dir(infer))\n"
            "assert all(getattr(infer, n) is not None for n in infer.__all__)\n"
            "assert infer.speculative.__name__ == 'infer.generation.speculative_accept'\n"
            "assert infer.roofline.__name__ == 'infer.perf.roofline'\n"
            "assert callable(infer.engine.make_engine) and not hasattr(infer, 'no_such_name')\n"
            "assert pallas_kernels.ragged_paged_attention is pallas_kernels.attention.ragged_paged_attention\n"
            "assert all(callable(getattr(pallas_kernels, n)) for n in pallas_kernels.__all__)\n"
            "assert all(callable(getattr(pm, n)) for n in pm.__all__)\n")
    loaded_after(code)
