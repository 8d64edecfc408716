"""`python -m deploy`: exit 0 on pass, 1 on mismatch, 2 on an unusable bundle or input."""

from pathlib import Path

import numpy as np
import pytest
from deploy_cli import deploy


def test_check_passes(cpsc_bundles):
    done = deploy("check", cpsc_bundles["x86_64"].path)
    assert done.returncode == 0, done.stderr
    assert "parity passed" in done.stdout and "noise" in done.stdout


def test_check_mismatch_exits_1(bundle_copy):
    """Golden outputs that PyTorch did not produce (manifest re-hashed to match)."""
    import json

    from deploy.bundle import sha256_file

    path = bundle_copy()
    golden = path / "golden" / "ecg.output.npy"
    np.save(golden, np.load(golden) * 1.01)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["golden/ecg.output.npy"] = {
        "sha256": sha256_file(golden),
        "bytes": golden.stat().st_size,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    done = deploy("check", path)
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "parity FAILED" in done.stdout


def test_run_round_trip(cpsc_bundles, tmp_path):
    bundle = cpsc_bundles["x86_64"].path
    done = deploy(
        "run", bundle, "--input", bundle / "golden/ecg.input.npy", "--output", tmp_path / "y.npy"
    )
    assert done.returncode == 0, done.stderr
    expected = np.load(bundle / "golden/ecg.output.npy")
    got = np.load(tmp_path / "y.npy")
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-5


# What each unusable case must say: the problem, named (the rest of the line says the fix).
UNUSABLE = {
    "tampered": "model.so does not match its sha256 in the manifest",
    "wrong_arch": "cannot run here: built for aarch64, this machine is x86_64",
    "bad_npy": "x.npy: .npy header",
    "wrong_shape": "100 samples, expected 512",
    "nan": "input holds NaN or Inf (first at batch 0, lead ECG, sample 3)",
    "unwritable": "no-such-dir/y.npy: No such file or directory",
    "device": "not a regular file",
    "disk_full": "No space left on device",
    "read_only": "Read-only file system",
    "missing": "absent.npy: No such file or directory",
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_exits_2_without_traceback(cpsc_bundles, bundle_copy, tmp_path, case, small_disk):
    bundle = cpsc_bundles["x86_64"].path
    x = np.load(bundle / "golden/ecg.input.npy")
    inp, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(inp, x)
    if case == "tampered":
        bundle = bundle_copy()
        (bundle / "model.so").write_bytes(b"\0" * (bundle / "model.so").stat().st_size)
    elif case == "wrong_arch":
        bundle = cpsc_bundles["aarch64"].path
    elif case == "bad_npy":
        inp.write_bytes(b"\x93NUMPY garbage")
    elif case == "wrong_shape":
        np.save(inp, x[:, :, :100])
    elif case == "nan":
        x[0, 0, 3] = np.nan
        np.save(inp, x)
    elif case == "unwritable":
        out = tmp_path / "no-such-dir" / "y.npy"
    elif case == "device":
        out = "/dev/full"  # never replaced by a rename, never written
    elif case == "disk_full":
        out = small_disk("8k") / "y.npy"  # two pages; the output needs 49 KiB
    elif case == "read_only":
        out = small_disk("1m", read_only=True) / "y.npy"
    elif case == "missing":
        inp = tmp_path / "absent.npy"
    done = deploy("run", bundle, "--input", inp, "--output", out)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert UNUSABLE[case] in done.stderr, done.stderr
    if case in ("disk_full", "read_only"):
        assert not list(Path(out).parent.iterdir())  # no partial file left behind


def test_info_describes_without_loading(cpsc_bundles):
    done = deploy("info", cpsc_bundles["aarch64"].path)
    assert done.returncode == 0
    assert "aarch64" in done.stdout and "runs here  no: built for aarch64" in done.stdout
