"""The data flow runs one way: mscnn <- compile <- (nothing); deploy stands alone.

deploy/ runs on devices with the TVM runtime and numpy only, so it must not import torch,
onnx, onnxruntime, mscnn or compile; mscnn must not know of ONNX or TVM.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "deploy": {"torch", "onnx", "onnxruntime", "mscnn", "compile"},
    "mscnn": {"onnx", "onnxruntime", "tvm", "compile", "deploy", "torch_ecg"},
    "compile": {"torch_ecg"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_package_imports_stay_in_their_lane(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_modules(f) & FORBIDDEN[package]) for f in files
    }
    assert not {f: m for f, m in offenders.items() if m}


def test_the_check_sees_imports():
    """Guard against a scanner that finds nothing: it must see this file's own imports."""
    assert {"ast", "pathlib", "pytest"} <= imported_modules(Path(__file__))
