"""The layout's rule, enforced: dependencies run one way.

handler -> wan_i2v.worker -> shared core; wan-i2v command -> wan_i2v.ops -> shared core. The operator
side never imports the worker side (not even inside a function), and imports none of the model stack,
boto3 or runpod when it loads, so an operator's laptop needs only `pip install wan-i2v`. The shared
core imports neither side.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "src" / "wan_i2v"
CORE = sorted(p for p in PACKAGE.glob("*.py"))
OPS = sorted((PACKAGE / "ops").rglob("*.py"))
WORKER = sorted((PACKAGE / "worker").rglob("*.py"))
HEAVY = ("torch", "diffusers", "transformers", "PIL", "boto3", "botocore", "runpod", "numpy", "imageio_ffmpeg")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, imported at module level) for every import in the file."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (also for an __init__.py)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, id(node) in top_level))
            found += [(f"{name}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


def test_the_import_analysis_sees_relative_and_nested_imports():
    job = imports(PACKAGE / "worker" / "job.py")
    assert ("wan_i2v.schema", True) in job and ("wan_i2v.worker.engine", True) in job
    client = imports(PACKAGE / "ops" / "client.py")
    assert ("botocore.exceptions", False) in client and ("wan_i2v.bucket", True) in client


@pytest.mark.parametrize("path", OPS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_operator_side_never_imports_the_worker_side_or_the_model_stack(path):
    for name, top_level in imports(path):
        assert not name.startswith("wan_i2v.worker"), f"{name} imported by {path.name}"
        if top_level:
            assert name.split(".")[0] not in HEAVY, f"{path.name} imports {name} when it loads"


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_shared_core_imports_neither_side(path):
    for name, top_level in imports(path):
        assert not name.startswith(("wan_i2v.worker", "wan_i2v.ops")), f"{name} imported by {path.name}"
        if top_level:
            assert name.split(".")[0] not in HEAVY, f"{path.name} imports {name} when it loads"


@pytest.mark.parametrize("path", WORKER, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_worker_side_never_imports_the_operator_side(path):
    assert not [name for name, _ in imports(path) if name.startswith("wan_i2v.ops")]


def test_the_operator_side_loads_without_the_model_stack():
    """The same rule at run time: with the heavy packages made unimportable, every operator module
    loads and the command builds its parser."""
    modules = [
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__") for p in OPS + CORE
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "import wan_i2v.ops.cli\n"
        "wan_i2v.ops.cli.build_parser()\n"
        "assert not [m for m in sys.modules if m.startswith('wan_i2v.worker')], 'the worker side was loaded'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
