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


# --------------------------------------------------------------------------------------
# Inside the packages: no import circle, and no module reaches for another's private name.

PACKAGES = ("mscnn", "compile", "deploy")


def module_of(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    """(dotted module name, is a package's __init__) of a file under `root`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_edges(path: Path, modules: set[str], root: Path = ROOT) -> dict[str, set[str]]:
    """{module this file imports: {names it takes from it}}, for every import in the file
    (function-level ones too: deferring an import does not break a circle), resolved
    to the project's modules (`from . import x` is an import of module x)."""
    name, is_package = module_of(path, root)
    package = name if is_package else name.rpartition(".")[0]
    edges: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    edges.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:  # a submodule, imported by name
                    edges.setdefault(target, set())
                elif base in modules:
                    edges.setdefault(base, set()).add(alias.name)
    return edges


def project_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, dict[str, set[str]]]:
    files = {module_of(p, root)[0]: p for pkg in packages for p in (root / pkg).rglob("*.py")}
    return {m: import_edges(p, set(files), root) for m, p in files.items()}


def circles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing
    itself): each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, {}):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def private_reaches(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    """Every `from X import _name` where X is another module of the project."""
    return sorted(
        f"{module} takes {name} from {target}"
        for module, edges in graph.items()
        for target, names in edges.items()
        for name in names
        if target != module and name.startswith("_") and not name.startswith("__")
    )


def private_attributes(root: Path = ROOT, packages=PACKAGES) -> list[str]:
    """Every `module._name` where `module` is a project module imported by that name."""
    found = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            aliases = {
                a.asname or a.name
                for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom)
                and (n.level or (n.module or "").split(".")[0] in PACKAGES)
                for a in n.names
            }
            found += [
                f"{path.relative_to(root)}:{n.lineno} {n.value.id}.{n.attr}"
                for n in ast.walk(tree)
                if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id in aliases
                and n.attr.startswith("_")
                and not n.attr.startswith("__")
            ]
    return found


def test_no_import_circle_in_the_packages():
    assert circles(project_graph()) == []


def test_no_module_imports_another_modules_private_name():
    assert private_reaches(project_graph()) == []
    assert private_attributes() == []


def test_the_circle_and_private_checks_see_them(tmp_path):
    """A planted circle (a -> b -> a, through a function-level import) and a planted
    private import are found; the checks are not vacuous."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import _hidden\n\ndef f():\n    from . import b\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n\n_hidden = 1\n")
    (pkg / "c.py").write_text("from . import b\n\nx = b._hidden\n")
    graph = project_graph(tmp_path, ("pkg",))
    assert circles(graph) == [["pkg.a", "pkg.b"]]
    assert private_reaches(graph) == ["pkg.a takes _hidden from pkg.b"]
    assert private_attributes(tmp_path, ("pkg",)) == ["pkg/c.py:3 b._hidden"]
