"""The bundle-kind registry: one place names the kinds, and the build asks it."""

import ast
from pathlib import Path

import pytest

from compile.bundles import KINDS, PRECISIONS, kind_for
from compile.errors import CompileError
from compile.variants import Variant
from deploy.manifest import PRECISIONS as MANIFEST_PRECISIONS

ROOT = Path(__file__).resolve().parents[2]


def test_the_manifest_and_the_registry_name_the_same_precisions():
    assert set(PRECISIONS) == set(MANIFEST_PRECISIONS)


def test_every_kind_is_found_by_its_own_key():
    for (precision, streaming), kind in KINDS.items():
        assert (kind.precision, kind.streaming) == (precision, streaming)
        assert kind_for(precision, 512 if streaming else None) is kind
    assert len({k.name for k in KINDS.values()}) == len(KINDS)


@pytest.mark.parametrize(
    ("precision", "hop", "message"),
    [
        ("bf16", None, "--precision 'bf16'; choose from: fp32, fp16, int8"),
        ("fp16", 512, "--hop with --precision fp16: stream bundles are fp32 or int8"),
    ],
)
def test_a_request_no_kind_builds_is_refused_naming_the_choices(precision, hop, message):
    with pytest.raises(CompileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kind_for(precision, hop)


def test_folder_names_follow_the_kind():
    v = Variant("1lead", ("II",), (1,))
    names = {key: kind.folder("p", v, 64) for key, kind in KINDS.items()}
    assert names == {
        ("fp32", False): "p-1lead",
        ("fp16", False): "p-1lead-fp16",
        ("fp32", True): "p-1lead-stream64",
        ("int8", False): "p-1lead-int8",
        ("int8", True): "p-1lead-stream64-int8",
    }


def test_the_build_imports_no_kind():
    """compile/build.py asks the registry; importing a kind's module would let the kind
    import the build back."""
    tree = ast.parse((ROOT / "compile" / "build.py").read_text())
    kinds = {p.stem for p in (ROOT / "compile" / "bundles").glob("*.py")} - {"__init__", "kind"}
    imported = {
        (node.module or "").split(".")[-1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "bundles"
        for alias in node.names
    }
    assert imported & kinds == set()
