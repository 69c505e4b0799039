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
