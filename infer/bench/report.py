"""Writing benchmark results: JSON files and markdown tables.

Rows are flat dicts of str / int / float / bool / None. `markdown_table` picks
columns (default: every key in first-seen order) and formats numbers with
significant digits so tables stay readable.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional, Sequence


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e6:
            return f"{v:.3e}"
        if a >= 100:
            return f"{v:,.1f}"
        if a >= 1:
            return f"{v:.3f}"
        if a >= 1e-3:
            return f"{v:.4f}"
        return f"{v:.3e}"
    return str(v).replace("|", "\\|")


def columns_of(rows: Iterable[dict]) -> list:
    cols = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    if not rows:
        return "_(no rows)_\n"
    cols = [c for c in (columns or columns_of(rows)) if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / jax scalars
        return x.item()
    return x


def write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(obj), f, indent=2)
        f.write("\n")
