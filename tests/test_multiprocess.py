"""Two processes joined by `jax.distributed.initialize` on loopback (one CPU device each, gloo collectives):
a tensor-parallel generation (TP = 2) from the CLI, and one engine whose host side runs on process 0 and
broadcasts every step, both give the tokens of a single process."""
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import subprocess_xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-m", "infer", "generate", "--config", "tiny", "--batch", "3", "--prompt-len", "12",
       "--max-new-tokens", "10", "--seed", "3"]


def _tokens(out: str):
    rows = re.findall(r"^prompt (\d+) \(len \d+\): (\[.*\])$", out, flags=re.M)
    assert len(rows) == 3, out
    return [r[1] for r in rows]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = subprocess_xla_flags()  # no forced device count: one CPU device per process
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_two_processes(argv, env, timeout):
    """Start argv as processes 0 and 1 of one jax.distributed runtime on a free loopback port; their stdouts."""
    port = _free_port()
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(env, INFER_COORDINATOR=f"127.0.0.1:{port}", INFER_NUM_PROCESSES="2",
                                       INFER_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def test_two_processes_generate_what_one_does():
    env = cpu_env()
    single = subprocess.run(CMD, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    outs = run_two_processes(CMD + ["--tp", "2"], env, timeout=300)
    want = _tokens(single.stdout)
    assert _tokens(outs[0]) == want and _tokens(outs[1]) == want
    assert "tensor-parallel over 2 devices on 2 process(es) (this is process 1)" in outs[1]


def test_partial_multiprocess_settings_are_refused_by_name(monkeypatch):
    from infer.parallel.distributed import settings_from_env
    for k in ("INFER_COORDINATOR", "INFER_NUM_PROCESSES", "INFER_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert settings_from_env() is None
    with pytest.raises(ValueError, match="process_id: missing"):
        settings_from_env("127.0.0.1:1", 2)
    monkeypatch.setenv("INFER_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"process_id: must be in \[0, num_processes=2\), got 2"):
        settings_from_env("127.0.0.1:1", 2)


ENGINE_SCRIPT = textwrap.dedent("""
    from infer.parallel.distributed import initialize
    initialize()  # INFER_* from the environment
    import jax
    import numpy as np
    import infer
    from infer.config import SamplingParams
    from infer.engine import Engine
    from infer.engine.multihost import follow, stop_followers
    from infer.parallel.tensor_parallel import make_mesh

    cfg = infer.ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=8, d_ff=128,
                            max_seq_len=128, dtype="float32")
    params = jax.tree_util.tree_map(lambda x: x * 1.5 if x.ndim > 2 else x,
                                    infer.init_params(cfg, jax.random.PRNGKey(4)))
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, 128, n).tolist() for n in (5, 13, 9, 7)]
    sp = SamplingParams(temperature=0.0, max_new_tokens=10)
    want = infer.generate(params, cfg, prompts, sp).tokens  # this process alone, on its own device
    assert len({tuple(t) for t in want}) > 1
    engine = Engine(params, cfg, mesh=make_mesh(2), num_pages=48, page_size=4, max_num_seqs=3,
                    max_num_batched_tokens=8, poison_freed_pages=True)
    if jax.process_index() == 0:
        ids = [engine.add_request(p, sp) for p in prompts]
        outs = engine.run_to_completion()
        stop_followers(engine)
        print("LEADER", [outs[i].token_ids for i in ids] == want, engine.stats()["steps"], flush=True)
    else:
        print("FOLLOWER", follow(engine), flush=True)
""")


def test_one_engine_across_two_processes_serves_the_single_process_tokens():
    outs = run_two_processes([sys.executable, "-c", ENGINE_SCRIPT], cpu_env(), timeout=400)
    leader = re.search(r"^LEADER (True|False) (\d+)$", outs[0], flags=re.M)
    follower = re.search(r"^FOLLOWER (\d+)$", outs[1], flags=re.M)
    assert leader and follower, outs
    assert leader.group(1) == "True"  # the engine's tokens equal generate's on one process
    assert int(follower.group(1)) == int(leader.group(2)) > 5  # the follower ran every step the leader ran
