"""`pip install .` (not only `-e`) installs every subpackage and the data files the code
reads at run time: the wheel is built from this tree, installed into a scratch folder,
and imported from there alone."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mscnn", "compile", "deploy")


def _subpackages() -> list[str]:
    return sorted(
        ".".join(p.parent.relative_to(ROOT).parts)
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("__init__.py")
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: setuptools would leave build/lib/ in the tree
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp / "dist"), str(source)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    [wheel] = (tmp / "dist").glob("mscnn_edge-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp / "site")
    return tmp / "site"


@pytest.mark.slow
def test_the_wheel_holds_every_subpackage_and_its_data_files(installed):
    for name in _subpackages():
        assert (installed / name.replace(".", "/") / "__init__.py").is_file(), name
    data = [
        "compile/lowering/cuda_stub.c",
        "deploy/mcu/stream_main.c",
        "deploy/mcu/mscnn_rt.c",
        "mscnn/weights/cpsc2019_qrs.pt",
    ]
    assert [d for d in data if not (installed / d).is_file()] == []
    assert list((installed / "compile" / "tuning").glob("*/*.json")), "no tuning records"


@pytest.mark.slow
def test_every_subpackage_imports_from_the_installed_wheel(installed, tmp_path):
    """Imported with the wheel's folder first on the path and this tree nowhere on it,
    so a module or data file the wheel misses fails here, not on a user's machine."""
    code = (
        "import importlib, sys\n"
        f"names = {_subpackages()!r}\n"
        "for n in names:\n"
        "    m = importlib.import_module(n)\n"
        f"    assert m.__file__.startswith({str(installed)!r}), (n, m.__file__)\n"
        "from compile.lowering.records import RECORDS_DIR\n"
        "from compile.mcu.firmware import FIRMWARE_DIR\n"
        "assert RECORDS_DIR.is_dir() and (FIRMWARE_DIR / 'mscnn_rt.c').is_file()\n"
        "print(len(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path, env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == len(_subpackages())
