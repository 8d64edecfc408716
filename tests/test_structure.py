"""Code-shape rules the project keeps: short functions, and one place that knows each fact."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def _functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", ["mscnn", "compile", "deploy"])
def test_no_function_is_longer_than_60_lines(package):
    long = {
        f"{p.relative_to(ROOT)}:{name}": n
        for p in sorted((ROOT / package).rglob("*.py"))
        for name, n in _functions(p)
        if n > MAX_LINES
    }
    assert long == {}


def test_the_length_check_sees_functions(tmp_path):
    source = tmp_path / "f.py"
    source.write_text("def f():\n" + "    x = 1\n" * 70)
    assert list(_functions(source)) == [("f", 71)]


def test_only_the_target_table_names_the_gpu_device():
    """`device == "cuda"` is asked through Target.is_gpu / TargetInfo.is_gpu, not spelled
    out at each site."""
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in ("compile", "deploy")
        for p in (ROOT / pkg).rglob("*.py")
        if 'device == "cuda"' in p.read_text() and p.name not in ("manifest.py", "targets.py")
    ]
    assert offenders == []
