"""Package boundaries: pallas_kernels < layers < infer. A module imports only its own package and the ones
below it, so the kernels run without the model and the model without the serving stack.

Every import counts, also one inside a function (a lazy import that climbs is still a climb); the source is
read with `ast`, nothing is imported.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVEL = {"pallas_kernels": 0, "layers": 1, "infer": 2}


def imported_packages(path):
    """(line, top-level package) for every absolute import in the file, at any depth."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def climbs(pkg):
    """'file:line imports X' for every import in pkg of a package above it."""
    out = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                for line, top in imported_packages(path):
                    if LEVEL.get(top, -1) > LEVEL[pkg]:
                        out.append(f"{os.path.relpath(path, ROOT)}:{line} imports {top}")
    return out


@pytest.mark.parametrize("pkg", ["pallas_kernels", "layers"])
def test_no_import_climbs_the_package_layers(pkg):
    assert climbs(pkg) == []


def test_relative_imports_stay_inside_their_package():
    """The walk above reads absolute imports; a relative one could not name a package above, but none is used
    so that every import reads as its full path."""
    relative = []
    for pkg in LEVEL:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    tree = ast.parse(open(path, encoding="utf-8").read(), path)
                    relative += [f"{os.path.relpath(path, ROOT)}:{n.lineno}" for n in ast.walk(tree)
                                 if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert relative == []


def test_the_check_sees_a_function_level_climb(tmp_path):
    """A climb inside a function body is found (the walk is not limited to the module's top level)."""
    path = tmp_path / "kernel.py"
    path.write_text("def f():\n    from layers.linear import Dense\n    import infer.config\n")
    assert [top for _, top in imported_packages(str(path))] == ["layers", "infer"]


def test_infer_config_imports_no_layer():
    """infer.config validates names against plain constants (pallas_kernels' tables), never the model's layers."""
    found = []
    for name in os.listdir(os.path.join(ROOT, "infer", "config")):
        if name.endswith(".py"):
            found += [top for _, top in imported_packages(os.path.join(ROOT, "infer", "config", name)) if top == "layers"]
    assert found == []


def test_perf_does_not_import_train():
    """Measuring a model (infer/perf) never imports the training stack."""
    found = []
    for name in os.listdir(os.path.join(ROOT, "infer", "perf")):
        if name.endswith(".py"):
            path = os.path.join(ROOT, "infer", "perf", name)
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            found += [f"{name}:{n.lineno}" for n in ast.walk(tree)
                      if (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("infer.train"))
                      or (isinstance(n, ast.Import) and any(a.name.startswith("infer.train") for a in n.names))]
    assert found == []
