"""The corpus: the Python standard library source of the running interpreter, split by file.

Every machine that runs this project has it. Files are listed in sorted order
(relative paths) and assigned to train or validation by a hash of the relative
path, so the split is deterministic and does not depend on the file order or on
which other files exist. Test suites, site-packages and vendored third-party
trees are excluded (they are large and not representative code).
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from typing import List, Tuple

EXCLUDE_DIRS = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3")


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_files(root: str | None = None) -> List[str]:
    """Relative paths of the .py files of the corpus, sorted."""
    root = root or stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS)
        for f in filenames:
            if f.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def split_of(relpath: str, val_fraction: float) -> str:
    """"val" or "train", from the first 8 bytes of sha256(relative path)."""
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") / 2.0 ** 64
    return "val" if h < val_fraction else "train"


def read_split(val_fraction: float = 0.05, root: str | None = None) -> Tuple[List[str], List[str]]:
    """(train texts, val texts): one string per file, files in sorted order."""
    root = root or stdlib_dir()
    train, val = [], []
    for rel in list_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        (val if split_of(rel, val_fraction) == "val" else train).append(text)
    if not train or not val:
        raise ValueError(f"corpus: split of {root} is empty (train {len(train)}, val {len(val)} files)")
    return train, val


def join(texts: List[str]) -> str:
    """Files joined with a separator line, the way the model sees them."""
    return "\n\n".join(texts)
