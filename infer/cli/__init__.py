"""The command line: `python -m infer generate ...` (main.py), text generation (text.py), the demo (demo.py)."""
