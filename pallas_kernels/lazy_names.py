"""Public names a package loads on first use (PEP 562): one helper for every lazy package `__init__`.

    _HOMES = {"ModelConfig": "infer.config.model_config", ...}   # public name -> the module defining it
    __all__, __getattr__, __dir__ = lazy_names(__name__, _HOMES)

Importing such a package loads none of the modules behind its names; reading a name imports its module once
and keeps the value in the package. It lives at the bottom layer (it imports nothing of the project) so that
pallas_kernels, layers and infer can all use it.
"""
import importlib
import sys
from typing import Callable, Dict, List, Tuple


def lazy_names(package: str, homes: Dict[str, str], modules: Tuple[str, ...] = (),
               subpackages: bool = False) -> Tuple[List[str], Callable, Callable]:
    """(__all__, __getattr__, __dir__) for `package`. homes: public name -> its module (for a name in `modules`,
    the module itself is the value); subpackages: any other attribute is tried as `package.<name>`."""
    public = list(homes)

    def getattr_(name):
        if name in homes:
            module = importlib.import_module(homes[name])
            value = module if name in modules else getattr(module, name)
        elif subpackages:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def dir_():
        return sorted(set(vars(sys.modules[package])) | set(public))

    return public, getattr_, dir_
