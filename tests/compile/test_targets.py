"""The target table: every entry is a valid TVM target with a known way to run it."""

import json
import subprocess
import sys

import pytest

from compile import TARGETS, CompileError, get_target
from compile.targets import ELF_MACHINES, check_compiler, tvm_target


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_target_is_valid_for_tvm(name):
    target = TARGETS[name]
    built = tvm_target(target)
    assert built.kind.name == target.tvm["kind"]
    assert target.arch in ELF_MACHINES
    assert target.run in ("native", "qemu", "gpu")
    assert (target.host is not None) == (target.device == "cuda")
    assert bool(target.qemu) == (target.run == "qemu")


def test_issue_targets_are_present():
    assert {"x86_64", "x86_64-avx512", "aarch64", "armv7", "cuda", "jetson-orin"} <= set(TARGETS)
    assert TARGETS["jetson-orin"].tvm["arch"] == "sm_87"
    assert TARGETS["armv7"].tvm["mfloat-abi"] == "hard"


def test_unknown_target_lists_valid_ones():
    with pytest.raises(CompileError, match="unknown target 'arm9'; choose from: x86_64, "):
        get_target("arm9")


@pytest.mark.parametrize("core", ["cortex-m7", "cortex-m4", "cortex-m55"])
def test_a_cortex_m_as_a_bundle_target_points_to_its_package(core):
    from compile.mcu.boards import CORES
    from compile.mcu.package import PACKAGES

    assert core in CORES and core in PACKAGES  # the names get_target knows are the tables'
    with pytest.raises(CompileError, match=f"make package TARGET={core}"):
        get_target(core)


def test_missing_compiler_names_the_package(monkeypatch):
    monkeypatch.setattr("compile.targets.shutil.which", lambda name: None)
    with pytest.raises(CompileError, match="apt-get install -y g\\+\\+-aarch64-linux-gnu"):
        check_compiler(TARGETS["aarch64"])


def test_cli_lists_targets():
    done = subprocess.run(
        [sys.executable, "-m", "compile", "targets", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(done.stdout)
    assert set(rows) == set(TARGETS)
    assert rows["aarch64"]["tvm"]["mtriple"] == "aarch64-linux-gnu"
    env = {"COLUMNS": "160", "PATH": ""}
    table = subprocess.run(
        [sys.executable, "-m", "compile", "targets"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    for name in TARGETS:
        assert name in table


def test_the_target_listing_reads_at_80_columns():
    """Every line fits 80 columns, and each target's name starts a line of its own."""
    listing = subprocess.run(
        [sys.executable, "-m", "compile", "targets"],
        capture_output=True, text=True, check=True, env={"COLUMNS": "80", "PATH": ""},
    ).stdout  # fmt: skip
    lines = listing.splitlines()
    assert max(len(line) for line in lines) <= 80
    starts = {line.split()[0] for line in lines if line and not line.startswith(" ")}
    assert set(TARGETS) | {"cortex-m4", "cortex-m7", "cortex-m55"} <= starts
