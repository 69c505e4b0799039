"""The README's Python example runs as written (the public API it shows exists and works)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no ```python block"
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["logits_OV"].shape == (2, scope["cfg"].vocab_size)
    assert len(scope["result"].tokens) == 2
