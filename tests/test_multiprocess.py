"""Two processes joined by `jax.distributed.initialize` on loopback run one tensor-parallel generation (TP = 2,
one CPU device each, gloo collectives): the tokens equal a single-process run of the same command."""
import os
import re
import socket
import subprocess
import sys

import pytest

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


def test_two_processes_generate_what_one_does():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    single = subprocess.run(CMD, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen(CMD + ["--tp", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(env, INFER_COORDINATOR=f"127.0.0.1:{port}",
                                                  INFER_NUM_PROCESSES="2", INFER_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
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
