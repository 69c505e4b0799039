"""The command line runs end to end and reports errors without a traceback."""
from infer.cli.main import main


def test_cli_generate_prints_metrics(capsys):
    assert main(["generate", "--config", "tiny", "--batch", "2", "--prompt-len", "6", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    for word in ("TTFT", "latency per token", "throughput"):
        assert word in out


def test_cli_reports_bad_config_clearly(capsys):
    assert main(["generate", "--config", "does-not-exist"]) == 2
    assert "no model config 'does-not-exist'" in capsys.readouterr().err


def test_cli_speculative_options(capsys):
    for option in (["--ngram"], ["--draft-layers", "1"]):
        assert main(["generate", "--config", "tiny", "--batch", "2", "--prompt-len", "6", "--max-new-tokens", "4",
                     "--speculative-k", "2"] + option) == 0
        out = capsys.readouterr().out
        assert "tokens per target pass" in out and "P(draft i accepted)" in out
    assert main(["generate", "--checkpoint", "x", "--prompt", "hi", "--ngram"]) == 2
    assert "random weights only" in capsys.readouterr().err


def test_the_installed_console_script_runs():
    """`pip install` puts an `infer` script beside the interpreter (pyproject's [project.scripts]); it answers
    --help with the three commands and refuses an unknown one, as `python -m infer` does."""
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(sys.executable), "infer")
    assert os.path.exists(script), f"{script}: not installed (pip install -e . puts it there)"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: infer" in out.stdout and all(c in out.stdout for c in ("generate", "chat", "serve"))
    bad = subprocess.run([script, "fly"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'fly'" in bad.stderr
