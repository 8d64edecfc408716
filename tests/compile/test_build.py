"""Bundles: one per target and variant, complete, hashed, right architecture, with parity."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import deploy.parity
import mscnn
from compile import TARGETS, BuildOptions, CompileError, build, resolve_variant
from compile.lowering.cuda import cubin_archs
from compile.targets import default_targets, elf_machine_of, runnable_here
from deploy.manifest import Manifest
from deploy.predictor import check_parity

ROOT = Path(__file__).resolve().parents[2]
# The PhysioNet/CinC 2021 lead sets, written out from the challenge's definition (not read
# back from mscnn.LEAD_SETS): names, and their indices in I II III aVR aVL aVF V1..V6.
CINC_SETS = {
    "12": (["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"],
           list(range(12))),
    "6": (["I", "II", "III", "aVR", "aVL", "aVF"], [0, 1, 2, 3, 4, 5]),
    "4": (["I", "II", "III", "V2"], [0, 1, 2, 7]),
    "3": (["I", "II", "V2"], [0, 1, 7]),
    "2": (["I", "II"], [0, 1]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", default_targets())
def test_bundle_per_target(cpsc_bundles, bundle_samples, name):
    bundle = cpsc_bundles[name]
    target = TARGETS[name]
    m = bundle.manifest
    raw = json.loads((bundle.path / "manifest.json").read_text())  # the on-disk contract
    assert raw["schema"] == "mscnn-edge/bundle" and raw["schema_version"] == 2
    assert raw["input"] == {
        "name": "ecg",
        "shape": [1, 1, bundle_samples],
        "dtype": "float32",
        "layout": "batch, leads, samples",
    }
    assert Manifest.from_json((bundle.path / "manifest.json").read_bytes()) == m
    assert bundle.path.name == "cpsc2019-1lead" and bundle.path.parent.name == name
    assert m.target.tvm == dict(target.tvm)
    assert m.leads == ["ECG"] and m.fs == 500
    assert m.output.shape == (1, 192, bundle_samples // 8)
    assert m.model.config == mscnn.PRESETS["cpsc2019"].config | {"groups": 1}
    assert set(m.tools) >= {"torch", "onnx", "onnxruntime", "apache-tvm", "compiler"}
    # Every file is listed with its hash, and nothing else is in the folder.
    listed = set(m.files)
    on_disk = {str(p.relative_to(bundle.path)) for p in bundle.path.rglob("*") if p.is_file()}
    assert listed == on_disk - {"manifest.json", "build.log"}
    assert {"model.so", "model.onnx", "golden/noise.input.npy", "golden/ecg.output.npy"} <= listed
    for rel, entry in m.files.items():
        data = (bundle.path / rel).read_bytes()
        assert (entry.sha256, entry.bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    # The library is ELF for the target's machine.
    assert elf_machine_of(bundle.path / "model.so") == target.elf_machine
    assert m.parity.onnxruntime.normalised <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if t.is_gpu and t.default])
def test_cuda_bundles_hold_compiled_kernels(cpsc_bundles, name):
    """Not CUDA source: an embedded cubin (ELF for EM_CUDA) of the target's SM."""
    library = cpsc_bundles[name].path / "model.so"
    assert TARGETS[name].tvm["arch"] in cubin_archs(library)
    assert b"__global__" not in library.read_bytes()  # no kernel source left behind
    assert cpsc_bundles[name].manifest.target.cuda_kernels == [TARGETS[name].tvm["arch"]]


def test_cubin_detector_sees_source_only_libraries(tmp_path):
    fake = tmp_path / "lib.so"
    fake.write_bytes(b"\x7fELF" + b"\0" * 60 + b'extern "C" __global__ void k() {}')
    assert cubin_archs(fake) == []


@pytest.mark.slow
@pytest.mark.parametrize("lead_set", list(mscnn.LEAD_SETS))
def test_x86_parity_for_every_lead_set(leadwise_bundles, lead_set):
    """The published figure is what a fresh check of the bundle measures (not merely
    'the build did not raise'), and it is within the CPU tolerance."""
    bundle = leadwise_bundles[lead_set]
    m = bundle.manifest
    names, indices = CINC_SETS[lead_set]
    assert (m.leads, m.lead_indices) == (names, indices)
    again, _ = check_parity(bundle.path)
    assert m.parity.tvm.how == "native" and again.passed
    assert m.parity.tvm.normalised == again.normalised <= 1e-5
    assert (m.parity.variant_contract is None) == (lead_set == "12")


@pytest.mark.slow
def test_golden_data_is_plain_npy_and_reproduces(cpsc_bundles, cpsc):
    """Golden outputs are what PyTorch gives for the golden inputs, in plain .npy files."""
    import torch

    bundle = cpsc_bundles["x86_64"]
    for entry in bundle.manifest.golden:
        raw = (bundle.path / entry.input).read_bytes()
        assert raw.startswith(b"\x93NUMPY")
        x = np.load(bundle.path / entry.input)
        y = np.load(bundle.path / entry.output)
        with torch.no_grad():
            assert np.array_equal(cpsc.model(torch.from_numpy(x)).numpy(), y)


def test_no_temporary_folders_left(cpsc_bundles):
    out = next(iter(cpsc_bundles.values())).path.parents[1]
    leftovers = [p for p in out.rglob(".*") if p.is_dir()]
    assert leftovers == []


@pytest.mark.slow
def test_failed_parity_keeps_the_log_and_publishes_nothing(tmp_path, cpsc, monkeypatch):
    monkeypatch.setitem(deploy.parity.TOLERANCES, "cpu", 1e-15)
    variant = resolve_variant(cpsc, "1")
    with pytest.raises(CompileError, match=r"disagrees with PyTorch.*log kept at"):
        build(cpsc, TARGETS["x86_64"], variant, tmp_path, BuildOptions(samples=256))
    assert not (tmp_path / "x86_64" / "cpsc2019-1lead").exists()
    log = (tmp_path / "x86_64" / "cpsc2019-1lead.failed" / "build.log").read_text()
    assert "FAIL" in log


def test_bad_variants_and_sizes(cpsc, leadwise, tmp_path):
    with pytest.raises(CompileError, match=r"unknown variant '6'.*choose from: 1"):
        resolve_variant(cpsc, "6")
    with pytest.raises(CompileError, match="unknown lead 'V9'"):
        resolve_variant(leadwise, "I,V9")
    assert resolve_variant(leadwise, "V5,I").name == "V5_I"
    with pytest.raises(CompileError, match="--samples 4: seq_len 4 is too short"):
        build(
            cpsc, TARGETS["x86_64"], resolve_variant(cpsc, "1"), tmp_path, BuildOptions(samples=4)
        )


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "compile", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--targets", "arm9"], "unknown target 'arm9'; choose from: x86_64"),
        (["--preset", "cpsc2019", "--variants", "6"], "unknown variant '6'"),
        (["--checkpoint", "nope.pt"], "checkpoint nope.pt: no such file"),
        (["--samples", "0"], "expected a positive integer"),
        (["--preset", "vgg"], "invalid choice: 'vgg'"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, message):
    done = run_cli("build", "--out", str(tmp_path), *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_checkpoint_of_another_preset(tmp_path, cpsc):
    path = mscnn.save_checkpoint(
        tmp_path / "c.pt", cpsc.model, leads=cpsc.leads, fs=500, preset="cpsc2019"
    )
    done = run_cli(
        "build",
        "--preset",
        "multi_scopic_leadwise",
        "--checkpoint",
        str(path),
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 2 and "different model than preset" in done.stderr


@pytest.mark.slow
def test_interrupted_build_leaves_no_bundle_and_recovers(tmp_path):
    """Kill a build midway: nothing is published; the next build cleans up and succeeds."""
    args = [
        "build",
        "--preset",
        "cpsc2019",
        "--targets",
        "x86_64",
        "--samples",
        "256",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "compile", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target_dir = tmp_path / "x86_64"
    deadline = time.monotonic() + 120
    while not list(target_dir.glob(".cpsc2019-1lead.tmp-*/model.onnx")):
        assert proc.poll() is None and time.monotonic() < deadline, "build never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (target_dir / "cpsc2019-1lead").exists()
    assert list(target_dir.glob(".cpsc2019-1lead.tmp-*"))  # the remains of the killed build
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert json.loads((target_dir / "cpsc2019-1lead" / "manifest.json").read_text())
    assert not list(target_dir.glob(".cpsc2019-1lead.tmp-*"))


def test_x86_bundles_run_here():
    assert runnable_here(TARGETS["x86_64"]) == (True, "native")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["x86_64", "aarch64"])
def test_rebuild_is_byte_identical(cpsc_bundles, cpsc, tmp_path, name, bundle_samples):
    """Same checkpoint, same options: the same bytes, TVM library included."""
    again = build(
        cpsc,
        TARGETS[name],
        resolve_variant(cpsc, "1"),
        tmp_path,
        BuildOptions(samples=bundle_samples),
    )
    assert again.manifest.files == cpsc_bundles[name].manifest.files


def test_unwritable_output_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli(
        "build",
        "--preset",
        "cpsc2019",
        "--targets",
        "x86_64",
        "--samples",
        "256",
        "--out",
        str(blocker / "build"),
    )
    assert done.returncode == 2, done.stderr
    assert "cannot write bundles under" in done.stderr and "choose a writable --out" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("size", "read_only", "expected"),
    [
        ("1m", False, "No space left on device"),
        ("1m", True, "Read-only file system"),
    ],
)
def test_full_or_read_only_disk_is_one_clear_line(small_disk, size, read_only, expected):
    """A disk that fills up during the build (cpsc2019 needs ~2 MB) or refuses writes:
    exit 2, the reason and the path in one line, no bundle published."""
    out = small_disk(size, read_only)
    done = run_cli(
        "build",
        "--preset",
        "cpsc2019",
        "--targets",
        "x86_64",
        "--samples",
        "256",
        "--out",
        str(out),
    )
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert not list(out.glob("*/*/manifest.json"))
    assert not list(out.glob("*/.*.tmp-*"))  # the temporary folder is not left behind


def test_footprint_is_the_memory_plan(cpsc_bundles, bundle_samples):
    """Weights as held in the library; activations = planned blocks + outputs."""
    fp = cpsc_bundles["x86_64"].manifest.footprint
    params = mscnn.load_model("cpsc2019").model.num_parameters
    assert fp.library_bytes == cpsc_bundles["x86_64"].manifest.files["model.so"].bytes
    assert 4 * params <= fp.weights_bytes <= 4 * params * 1.05  # + folded BN constants
    assert fp.output_bytes == 4 * 192 * (bundle_samples // 8)
    # The widest intermediate (16 channels at full length) fits in the planned blocks.
    assert fp.activation_bytes >= fp.output_bytes + 4 * 16 * bundle_samples
    assert cpsc_bundles["cuda"].manifest.footprint.activation_bytes is None


def test_cli_parity_failure_exits_1(tmp_path, monkeypatch, capsys):
    from compile.cli import main

    monkeypatch.setitem(deploy.parity.TOLERANCES, "cpu", 1e-15)
    code = main(
        [
            "build",
            "--preset",
            "cpsc2019",
            "--targets",
            "x86_64",
            "--samples",
            "256",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 1
    assert "disagrees with PyTorch" in capsys.readouterr().err
