"""`make demo` (python -m infer.cli.demo) runs end to end on the real model and prints what it promises."""
from infer.cli.demo import main


def test_demo_runs_and_reports(capsys):
    # Stacked layout: the CPU default (unrolled, tests/test_layout.py; end to end in tests/test_chat.py's CLI test)
    # compiles each of the demo's programs ~2.5x longer, 75 s instead of 36 s here.
    assert main(["--max-new-tokens", "8", "--repeats", "1", "--layout", "stacked"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out  # the real model answers the first question (greedy, deterministic)
    for needle in ("=== chat", "=== code completion", "plain, batch 1", "prompt lookup k=4, batch 3",
                   "same output: True"):
        assert needle in out, needle
    assert "same output: False" not in out
