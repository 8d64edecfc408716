"""fp16 bundles (aarch64 +fullfp16): half-precision arithmetic in the shipped library,
parity with fp32 PyTorch under the fp16 tolerance with the native runner under qemu, and
the detector's accuracy on held-out records against fp32 (its beats are reported, not
required to be PyTorch's: a reduced precision is judged on accuracy)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from native_runner import run_native

from compile import TARGETS, BuildOptions, build, resolve_variant
from compile.bundles.quantized import ACCURACY_LIMITS
from compile.int8.quantize import HELD_OUT_RECORDS
from deploy.parity import TOLERANCES
from deploy.rpeaks import RPeakRule, detect_rpeaks, score_rpeaks
from mscnn import data as ecg_data

pytestmark = pytest.mark.skipif(
    not (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file(),
    reason=f"the detector's golden records need {ecg_data.CPSC2019_FILE} in {ecg_data.data_dir()}",
)


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory, qrs):
    out = tmp_path_factory.mktemp("qrs-fp16")
    return build(
        qrs, TARGETS["aarch64"], resolve_variant(qrs, "1"), out, BuildOptions(precision="fp16")
    )


def test_fp16_manifest(fp16_bundle):
    m = fp16_bundle.manifest
    assert m.precision == "fp16" and m.quantization is None and not m.task_gates
    assert m.parity.tolerance == TOLERANCES["fp16"] == 2e-2
    assert "+fullfp16" in m.target.tvm["mattr"] and "asimdhp" in m.target.cpu_flags
    assert m.parity.onnxruntime.passed  # the fp32 ONNX export it was compiled from
    assert m.name == "cpsc2019_qrs-1lead-fp16"


def test_library_computes_in_half_precision(fp16_bundle):
    tool = "aarch64-linux-gnu-objdump"
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (make toolchains)")
    asm = subprocess.run([tool, "-d", str(fp16_bundle.path / "model.so")], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    half = re.findall(r"\s(fadd|fmla|fmul|fmaxnm)\s+v\d+\.8h", asm)
    assert len(half) >= 50, f"{len(half)} half-precision vector instructions"
    assert "fcvtl" in asm  # fp16 products widened into the fp32 accumulators


@pytest.mark.cross
def test_fp16_passes_its_tolerance_under_qemu(fp16_bundle, tmp_path):
    """The native runner on a copy listing 5 of the 52 cases (noise and four records)."""
    copy = tmp_path / fp16_bundle.path.name
    shutil.copytree(fp16_bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    golden = manifest["golden"]
    manifest["golden"] = [golden[0]] + [g for g in golden if g["name"].startswith("record-")][::16]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = run_native("aarch64", copy, "--check")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    summary = done.stdout.splitlines()[-1]
    assert re.fullmatch(r"check: pass 5/5 worst_normalised=(\S+) beats=\d/4 \(reported, "
                        r"not judged: fp16\)", summary), summary  # fmt: skip
    worst = float(summary.split("worst_normalised=")[1].split()[0])
    assert 1e-5 < worst <= 2e-2  # not fp32's error: it really is half precision


@pytest.mark.slow
@pytest.mark.cross
def test_fp16_detector_holds_fp32s_accuracy_on_held_out_records(fp16_bundle, qrs, tmp_path):
    """The int8 goal's limits, for fp16 under qemu: CPSC2019 score within 0.01 and F1
    within 0.5 points of fp32 PyTorch on the held-out records."""
    if qrs.source.startswith("seeded"):
        pytest.skip("seeded weights detect nothing: the trained detector is not here")
    records = ecg_data.cpsc2019_records()
    held = list(HELD_OUT_RECORDS)
    x = records.signals[held][:, None, :].astype("<f4")
    got = []
    for i in range(len(held)):
        np.save(tmp_path / "x.npy", x[i : i + 1])
        done = run_native("aarch64", fp16_bundle.path, "--input", tmp_path / "x.npy",
                          "--output", tmp_path / "y.npy")  # fmt: skip
        assert done.returncode == 0, done.stderr
        got.append(np.load(tmp_path / "y.npy")[0])
    with torch.no_grad():
        ref = qrs.model(torch.from_numpy(x)).numpy()
    rule = RPeakRule(reduction=qrs.model.reduction, fs=records.fs)
    truth = [records.r_peaks[i] for i in held]

    def score(logits):
        found = [detect_rpeaks(y, rule, x.shape[2]) for y in logits]
        return score_rpeaks(truth, found, records.fs)

    fp32, fp16 = score(ref), score(got)
    assert fp32.score > 0.8
    assert fp32.score - fp16.score <= ACCURACY_LIMITS[0], (fp32, fp16)
    assert 100 * (fp32.f1 - fp16.f1) <= ACCURACY_LIMITS[1], (fp32, fp16)


def test_fp16_is_refused_where_there_is_no_half_precision(tmp_path, qrs):
    from compile.errors import CompileError

    with pytest.raises(CompileError, match="has no fp16 bundles: it needs half-precision"):
        build(qrs, TARGETS["x86_64"], resolve_variant(qrs, "1"), tmp_path,
              BuildOptions(precision="fp16"))  # fmt: skip
    assert not list(tmp_path.iterdir())
