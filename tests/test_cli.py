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
