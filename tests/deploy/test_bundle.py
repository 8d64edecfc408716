"""load_bundle verifies every file against the manifest before any library is loaded."""

import json
import subprocess

import pytest

from deploy import DeployError, load_bundle
from deploy.bundle import host_arch


def test_a_good_bundle_loads(cpsc_bundles):
    bundle = load_bundle(cpsc_bundles["x86_64"].path)
    assert bundle.name == "cpsc2019-1lead"
    assert bundle.input_shape[1] == 1 and bundle.leads == ["ECG"]
    assert bundle.runnable_here() == (True, "native")
    assert set(bundle.golden) == {"noise", "ecg"}


@pytest.mark.parametrize(
    "rel", ["model.so", "model.onnx", "golden/ecg.input.npy", "golden/noise.output.npy"]
)
def test_bit_flip_in_any_file_is_refused(bundle_copy, rel):
    path = bundle_copy()
    data = bytearray((path / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / rel).write_bytes(bytes(data))
    with pytest.raises(DeployError, match=f"{rel} does not match its sha256.*not loaded"):
        load_bundle(path)


def test_truncated_and_missing_files_are_refused(bundle_copy):
    path = bundle_copy()
    library = path / "model.so"
    library.write_bytes(library.read_bytes()[:1000])
    with pytest.raises(DeployError, match=r"model.so is 1000 bytes, the manifest says \d+"):
        load_bundle(path)
    library.unlink()
    with pytest.raises(DeployError, match="model.so is missing"):
        load_bundle(path)


def test_a_tampered_library_never_runs(bundle_copy, tmp_path):
    """A library whose constructor leaves a mark: refused unloaded, so no mark."""
    marker = tmp_path / "constructor-ran"
    source = tmp_path / "evil.c"
    source.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void mark(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n'
    )
    evil = tmp_path / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(evil), str(source)], check=True)
    path = bundle_copy()
    (path / "model.so").write_bytes(evil.read_bytes())
    with pytest.raises(DeployError):
        load_bundle(path)
    from deploy import Predictor

    with pytest.raises(DeployError):
        Predictor(path)
    assert not marker.exists()
    import ctypes  # the positive control: loading it does leave the mark

    ctypes.CDLL(str(evil))
    assert marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schema_version=1), "schema version 1.*rebuild"),
        (lambda m: m.update(schema="other"), "not an mscnn-edge bundle manifest"),
        (lambda m: m.pop("files"), "manifest lacks 'files'"),
        (lambda m: m["files"].pop("model.so"), "lists no model.so"),
        (
            lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0", "bytes": 1}}),
            "not a path inside the bundle",
        ),
        (
            lambda m: m["golden"].append({"name": "x", "input": "x.npy", "output": "y.npy"}),
            r"golden\[2\].input' must be a file hashed in the manifest, got x.npy",
        ),
    ],
    ids=["old_version", "schema", "no_files", "no_library", "escape", "unhashed_golden"],
)
def test_bad_manifests(bundle_copy, edit, message):
    path = bundle_copy()
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DeployError, match=message):
        load_bundle(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not an mscnn-edge bundle manifest"),
    ],
)
def test_unreadable_manifests(bundle_copy, content, message):
    path = bundle_copy()
    (path / "manifest.json").write_bytes(content)
    with pytest.raises(DeployError, match=message):
        load_bundle(path)


def test_oversized_manifest_is_not_parsed(bundle_copy):
    path = bundle_copy()
    (path / "manifest.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(DeployError, match="manifest.json is larger than any real one"):
        load_bundle(path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(DeployError, match="no such folder"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(DeployError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_another_architecture_is_refused_before_loading(cpsc_bundles):
    bundle = load_bundle(cpsc_bundles["aarch64"].path)  # verifies: hashes are fine
    runs, why = bundle.runnable_here()
    assert not runs and why == f"built for aarch64, this machine is {host_arch()}"
    from deploy import Predictor

    with pytest.raises(DeployError, match="cannot run here: built for aarch64"):
        Predictor(bundle)


def test_cuda_bundle_without_gpu_is_not_run(cpsc_bundles):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present: the no-GPU refusal cannot be observed here")
    from deploy import Predictor

    with pytest.raises(DeployError, match="cannot run here: no GPU"):
        Predictor(cpsc_bundles["cuda"].path)
