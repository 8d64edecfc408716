"""load_bundle's integrity checks on a tiny bundle: fast enough to run for every mutant.

The bundle (a two-branch model, 64 samples, x86-64) is built once per source version and
kept in pytest's cache, keyed by a hash of the mscnn, compile and deploy sources, so a
run that changes nothing reuses it and a changed source rebuilds it. Every test tampers
with a private copy."""

import hashlib
import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from deploy_cli import deploy as deploy_cli

from deploy import DeployError, load_bundle
from deploy import bundle as bundle_module
from deploy import files as files_module

SAMPLES = 64
FILES = ["model.so", "model.onnx", "golden/noise.input.npy", "golden/ecg.output.npy"]


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def rewrite_manifest(path: Path, change) -> None:
    data = manifest_of(path)
    change(data)
    (path / "manifest.json").write_text(json.dumps(data))


def relist(path: Path, rel: str) -> None:
    """Re-hash one file into the manifest, as someone who tampers with care would."""
    data = (path / rel).read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    rewrite_manifest(path, lambda m: m["files"].update({rel: entry}))


def refusal(path: Path) -> str:
    with pytest.raises(DeployError) as err:
        load_bundle(path)
    message = str(err.value)
    assert message.startswith(f"bundle {path}: ") and "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------
# A good bundle


def test_a_good_bundle_loads_with_what_its_manifest_says(tiny):
    bundle = load_bundle(tiny)
    assert bundle.path == tiny and bundle.name == "custom-1lead"
    assert bundle.device == "cpu" and bundle.target.name == "x86_64"
    assert bundle.input_shape == (1, 1, SAMPLES) and bundle.output_shape == (1, 16, SAMPLES // 2)
    assert bundle.leads == ["ECG"]
    assert bundle.runnable_here() == (True, "native")
    listed = manifest_of(tiny)["files"]
    for rel in FILES:
        data = (tiny / rel).read_bytes()
        assert bundle.manifest.files[rel].sha256 == hashlib.sha256(data).hexdigest()
        assert bundle.manifest.files[rel].bytes == len(data) == listed[rel]["bytes"]
    assert set(bundle.golden) == {"noise", "ecg"}
    for name, (x, y) in bundle.golden.items():
        assert np.array_equal(x, np.load(tiny / "golden" / f"{name}.input.npy"))
        assert np.array_equal(y, np.load(tiny / "golden" / f"{name}.output.npy"))
        assert x.shape == bundle.input_shape and y.shape == bundle.output_shape


# --------------------------------------------------------------------------------------
# Every listed file, checked before anything is loaded


@pytest.mark.parametrize("rel", FILES)
def test_a_flipped_bit_in_any_file_is_refused(tiny, rel):
    data = bytearray((tiny / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tiny / rel).write_bytes(bytes(data))
    assert (
        f"{rel} does not match its sha256 in the manifest (tampered or corrupted); it "
        "was not loaded" in refusal(tiny)
    )


@pytest.mark.parametrize("rel", FILES)
def test_a_changed_size_is_refused_before_hashing(tiny, rel):
    size = (tiny / rel).stat().st_size
    with open(tiny / rel, "ab") as f:
        f.write(b"\0")
    message = refusal(tiny)
    assert f"{rel} is {size + 1} bytes, the manifest says {size} (truncated or replaced)" in (
        message
    )
    (tiny / rel).write_bytes((tiny / rel).read_bytes()[: size - 1])
    assert f"{rel} is {size - 1} bytes, the manifest says {size}" in refusal(tiny)


@pytest.mark.parametrize("rel", FILES)
def test_a_missing_file_is_refused(tiny, rel):
    (tiny / rel).unlink()
    assert f"{rel} is missing" in refusal(tiny)


def test_the_last_listed_file_is_checked_too(tiny):
    """Every entry, not only the first few: the check runs over the whole list."""
    last = list(manifest_of(tiny)["files"])[-1]
    data = bytearray((tiny / last).read_bytes())
    data[-1] ^= 0x80
    (tiny / last).write_bytes(bytes(data))
    assert f"{last} does not match its sha256" in refusal(tiny)


def test_a_library_rehashed_into_the_manifest_must_still_be_elf(tiny):
    (tiny / "model.so").write_bytes(b"#!/bin/sh\necho not a library\n" * 8)
    relist(tiny, "model.so")
    assert "model.so is not an ELF library" in refusal(tiny)


def test_a_manifest_without_the_library_is_refused(tiny):
    rewrite_manifest(tiny, lambda m: m["files"].pop("model.so"))
    assert refusal(tiny).endswith(": manifest lists no model.so")


def test_not_a_bundle_folder(tmp_path, tiny):
    with pytest.raises(DeployError, match=r"no such folder"):
        load_bundle(tmp_path / "absent")
    with pytest.raises(DeployError, match=r"no such folder"):
        load_bundle(tiny / "model.so")
    with pytest.raises(DeployError, match=r"no manifest\.json; is this a bundle folder\?"):
        load_bundle(tmp_path)


def test_a_manifest_that_is_a_symlink_is_refused(tiny, tmp_path):
    outside = tmp_path / "manifest-elsewhere.json"
    (tiny / "manifest.json").rename(outside)
    (tiny / "manifest.json").symlink_to(outside)
    assert "manifest.json: a symlink; bundle files must be plain files" in refusal(tiny)
    outside.unlink()  # dangling: still refused, still as a symlink, not "no manifest"
    assert "symlink" in refusal(tiny)


def test_an_unreadable_manifest_is_refused_with_the_bundle_named(tiny):
    (tiny / "manifest.json").write_text("{not json")
    assert "manifest.json is not valid JSON" in refusal(tiny)


def test_a_golden_file_swapped_for_a_symlink_is_refused(tiny, tmp_path):
    rel = "golden/ecg.input.npy"
    shutil.copy(tiny / rel, tmp_path / "copy.npy")
    (tiny / rel).unlink()
    (tiny / rel).symlink_to(tmp_path / "copy.npy")  # same bytes, but outside the folder
    assert "symlink" in refusal(tiny)


def test_an_oversized_manifest_is_refused_unread(tiny):
    data = manifest_of(tiny)
    text = json.dumps(data)
    (tiny / "manifest.json").write_text(text[:-1] + " " * (1 << 20) + "}")  # valid, 1 MiB+
    assert "manifest.json is larger than any real one" in refusal(tiny)


def test_a_golden_file_that_is_no_npy_is_named_when_read(tiny):
    """Re-hashed garbage passes the hash check; reading it still fails, naming the file."""
    rel = "golden/ecg.input.npy"
    (tiny / rel).write_bytes(b"\x93NUMPY not really")
    relist(tiny, rel)
    bundle = load_bundle(tiny)
    with pytest.raises(DeployError) as err:
        _ = bundle.golden
    message = str(err.value)
    assert message.startswith(f"bundle {tiny}: ") and rel in message, message


def test_a_golden_read_error_names_the_bundle_once(tiny):
    rel = "golden/ecg.input.npy"
    (tiny / rel).write_bytes(b"\x93NUMPY not really")
    relist(tiny, rel)
    with pytest.raises(DeployError) as err:
        _ = load_bundle(tiny).golden
    assert str(err.value).count(str(tiny)) == 1, str(err.value)


# --------------------------------------------------------------------------------------
# Hashing


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 19) + 3])
def test_sha256_of_files_of_any_size(tmp_path, size):
    """Several reads for files over 1 MiB: the digest and the private copy are still the
    file's, byte for byte."""
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert files_module.sha256_file(path) == expected
    copy = io.BytesIO()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert files_module.sha256_fd(fd, copy) == expected
    finally:
        os.close(fd)
    assert copy.getvalue() == data


# --------------------------------------------------------------------------------------
# The library that is loaded is the one that was verified


def test_the_private_library_is_a_verified_copy_in_a_private_folder(tiny):
    bundle = load_bundle(tiny)
    with bundle.private_library() as copy:
        assert copy.name == "model.so" and copy.parent != tiny
        assert copy.read_bytes() == (tiny / "model.so").read_bytes()
        assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
        folder = copy.parent
    assert not folder.exists()  # removed afterwards


def test_a_library_changed_after_verification_is_not_loaded(tiny):
    bundle = load_bundle(tiny)
    data = bytearray((tiny / "model.so").read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, other bytes: after load_bundle checked it
    (tiny / "model.so").write_bytes(bytes(data))
    with (
        pytest.raises(
            DeployError, match="model.so changed after it was verified; it was not loaded"
        ),
        bundle.private_library(),
    ):
        pass


# --------------------------------------------------------------------------------------
# Where a bundle can run


def test_can_run_here():
    here = bundle_module.host_arch()
    other = "aarch64" if here != "aarch64" else "x86_64"
    assert bundle_module.can_run_here(here, "cpu") == (True, "native")
    assert bundle_module.can_run_here(other, "cpu") == (
        False,
        f"built for {other}, this machine is {here}",
    )
    flags = sorted(bundle_module.cpu_flags())
    assert flags, "no CPU flags read from /proc/cpuinfo"
    assert bundle_module.can_run_here(here, "cpu", flags[:3]) == (True, "native")
    assert bundle_module.can_run_here(here, "cpu", [flags[0], "zz_none", "aa_none"]) == (
        False,
        "this CPU lacks aa_none, zz_none",
    )


X86_CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme sse2 avx2 avx512f
bugs\t\t: sysret_ss_attrs
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes crc32 cpuid
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        (X86_CPUINFO, {"fpu", "vme", "sse2", "avx2", "avx512f"}),
        (ARM_CPUINFO, {"fp", "asimd", "evtstrm", "aes", "crc32", "cpuid"}),
        ("processor\t: 0\n", set()),
    ],
    ids=["x86", "arm", "none"],
)
def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path, text, flags):
    """x86 names them `flags`, ARM `Features`; the value after the colon, word by word."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    real = bundle_module.Path
    monkeypatch.setattr(
        bundle_module, "Path", lambda p: real(cpuinfo) if p == "/proc/cpuinfo" else real(p)
    )
    assert bundle_module.cpu_flags() == frozenset(flags)


def test_cpu_flags_of_this_machine():
    with open("/proc/cpuinfo") as f:
        line = next((x for x in f if x.startswith(("flags", "Features"))), ":")
    assert bundle_module.cpu_flags() == frozenset(line.partition(":")[2].split())


def no_gpu_here() -> None:
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present here: the no-GPU refusal cannot be seen")


def test_a_cuda_bundle_needs_a_gpu():
    no_gpu_here()
    assert bundle_module.can_run_here(bundle_module.host_arch(), "cuda") == (False, "no GPU")


def test_a_bundle_says_where_it_runs_from_its_manifest(tiny):
    """runnable_here reads the manifest's device and CPU flags (the manifest is not in its
    own hash list, so these edits load)."""
    rewrite_manifest(tiny, lambda m: m["target"].update(cpu_flags=["zz_none"]))
    assert load_bundle(tiny).runnable_here() == (False, "this CPU lacks zz_none")
    no_gpu_here()
    rewrite_manifest(tiny, lambda m: m["target"].update(cpu_flags=[], device="cuda"))
    assert load_bundle(tiny).runnable_here() == (False, "no GPU")


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "x86_64"),
        ("AMD64", "x86_64"),
        ("aarch64", "aarch64"),
        ("arm64", "aarch64"),
        ("armv7l", "armv7"),
        ("armv8l", "armv7"),
        ("riscv64", "riscv64"),
    ],
)
def test_host_arch_names_match_manifest_arches(monkeypatch, machine, arch):
    monkeypatch.setattr(bundle_module.platform, "machine", lambda: machine)
    assert bundle_module.host_arch() == arch


def test_the_manifest_file_on_disk_is_never_rewritten_by_loading(tiny):
    before = (tiny / "manifest.json").read_bytes(), os.stat(tiny / "manifest.json").st_mtime_ns
    load_bundle(tiny)
    after = (tiny / "manifest.json").read_bytes(), os.stat(tiny / "manifest.json").st_mtime_ns
    assert before == after


# --------------------------------------------------------------------------------------
# A library swapped for another model's, its hashes rewritten to match

SWAPPED = "model.so is not the model its manifest describes"


def swap_library(into: Path, donor: Path) -> None:
    shutil.copy(donor / "model.so", into / "model.so")
    relist(into, "model.so")


def one_line_refusal(args: list, capsys, *needles: str) -> str:
    """`python -m deploy ARGS` (in process): exit 2 and one `error:` line on stderr holding
    every needle, nothing on stdout (a traceback would fail the test as an exception)."""
    from deploy.cli import main

    assert main([str(a) for a in args]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_deploy_check_refuses_a_swapped_library_in_one_line(tiny, tiny_detector_bundle, capsys):
    swap_library(tiny, tiny_detector_bundle)
    load_bundle(tiny)  # the rewritten hashes pass: only the library itself can tell
    one_line_refusal(
        ["check", tiny],
        capsys,
        SWAPPED,
        "its ecg is (1, 1, 128) float32, the manifest's input (1, 1, 64) float32",
        "rebuild the bundle",
    )


def test_deploy_run_refuses_a_swapped_library_and_writes_nothing(
    tiny, tiny_detector_bundle, tmp_path, capsys
):
    swap_library(tiny, tiny_detector_bundle)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, SAMPLES), np.float32))
    out = tmp_path / "y.npy"
    one_line_refusal(["run", tiny, "--input", x, "--output", out], capsys, SWAPPED)
    assert not out.exists()


def test_deploy_detect_refuses_a_swapped_library_and_writes_nothing(
    tiny_detector_bundle, tiny_bundle, tmp_path, capsys
):
    """A subprocess as a user runs it, beside the in-process refusals above."""
    detector = Path(shutil.copytree(tiny_detector_bundle, tmp_path / "detector"))
    record = tmp_path / "record.npy"
    np.save(record, np.random.default_rng(0).standard_normal(2 * SAMPLES).astype(np.float32))
    swap_library(detector, tiny_bundle)
    csv = tmp_path / "beats.csv"
    done = deploy_cli("detect", detector, "--input", record, "--csv", csv)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: bundle custom-1lead: {SWAPPED} (its ecg is (1, 1, 64)")
    assert len(done.stderr.strip().splitlines()) == 1 and not csv.exists()
    swap_library(detector, tiny_detector_bundle)  # its own library back: it runs
    from deploy.cli import main

    assert main(["detect", str(detector), "--input", str(record), "--csv", str(csv)]) == 0
    assert csv.read_text().startswith("sample,seconds,rr_ms\n")


def test_a_library_whose_output_is_not_the_manifests_is_refused(tiny):
    """Same input, another output: the probe call compares what came back too."""
    import tvm

    from deploy.predictor import check_library

    bundle = load_bundle(tiny)
    device = tvm.cpu(0)

    def main(x):
        assert tuple(x.shape) == bundle.input_shape
        return tvm.runtime.tensor(np.zeros((1, 64, 1), np.float32), device)

    with pytest.raises(DeployError) as err:
        check_library(bundle, main, tvm, device)
    assert f"{SWAPPED} (its output is (1, 64, 1), the manifest's model gives (1, 16, 32))" in str(
        err.value
    )
    check_library(
        bundle, lambda x: tvm.runtime.tensor(np.zeros((1, 16, 32), np.float32)), tvm, device
    )
