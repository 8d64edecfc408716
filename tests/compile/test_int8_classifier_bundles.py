"""The leadwise_classifier preset in int8, as `make build PRESET=leadwise_classifier
PRECISION=int8` builds it: the 12-lead model and a 2-lead variant for the x86 target this
CPU runs, bit for bit against the int8 reference with the decisions judged; the 2-lead
variant for aarch64 under qemu with the native runner; the held-out decisions against fp32
in the manifest."""

import json
import re
import shutil

import pytest
from native_runner import run_native

from compile import TARGETS, BuildOptions, build, resolve_variant
from compile.int8 import quantize
from deploy import load_bundle
from deploy.bundle import cpu_flags, host_arch
from deploy.describe import describe
from deploy.predictor import check_bundle
from mscnn import data as ecg_data


def host_target() -> str:
    return "x86_64-avx512" if "avx512_vnni" in cpu_flags() else "x86_64"


@pytest.fixture(scope="module")
def classifier_int8(tmp_path_factory):
    import mscnn

    if not (ecg_data.data_dir() / ecg_data.CINC2021_FILE).is_file():
        pytest.skip(f"int8 calibration needs {ecg_data.CINC2021_FILE} in {ecg_data.data_dir()}")
    if host_arch() != "x86_64":
        pytest.skip("the x86 int8 bundles run in process on an x86-64 host only")
    loaded = mscnn.load_model("leadwise_classifier")
    out = tmp_path_factory.mktemp("classifier-int8")
    options = BuildOptions(precision="int8")
    x86 = TARGETS[host_target()]
    bundles = {
        spec: build(loaded, x86, resolve_variant(loaded, spec), out, options)
        for spec in ("12", "2")
    }
    bundles["aarch64"] = build(
        loaded, TARGETS["aarch64"], resolve_variant(loaded, "2"), out, options
    )
    return loaded, bundles


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["12", "2"])
def test_x86_classifier_bundles_are_bit_exact_with_their_decisions(classifier_int8, spec):
    _, bundles = classifier_int8
    m = bundles[spec].manifest
    assert m.precision == "int8" and m.name == f"leadwise_classifier-{spec}lead-int8"
    assert tuple(m.output.shape) == (1, 8) and m.parity.tolerance == 0.0
    assert m.parity.tvm.passed and m.parity.tvm.max_abs == 0.0
    assert m.parity.task.kind == "decisions" and m.parity.task.identical == m.parity.task.cases
    assert m.parity.task.cases == 10  # the CinC golden records
    done = check_bundle(bundles[spec].path)  # again, as a device loads it
    assert done.verdict.passed and done.verdict.max_abs == 0.0


@pytest.mark.slow
def test_the_manifest_reports_decisions_against_fp32_on_held_out_records(classifier_int8):
    loaded, bundles = classifier_int8
    for spec in ("12", "2"):
        q = bundles[spec].manifest.quantization
        d = q.decisions
        assert d is not None and q.accuracy is None
        assert d.records == list(quantize.HELD_OUT_RECORDS)
        assert not set(d.records) & set(q.calibration_records)
        assert d.decisions == 8 * len(d.records) and 0.5 * d.decisions < d.agreed <= d.decisions
        assert 0 < d.normalised < 1
        assert q.fp32_weights_bytes == 4 * q.weights_bytes
    full, two = (bundles[s].manifest.quantization for s in ("12", "2"))
    # The 10 dropped leads' convs are gone; SE and the head (over all channels) stay.
    convs = loaded.model.cnn.parameters()
    backbone = sum(p.numel() for p in convs if p.dim() > 1)
    assert full.weights_bytes - two.weights_bytes == backbone * 10 // 12
    lines = dict(describe(load_bundle(bundles["12"].path)))
    assert re.search(r"held-out decisions \d+/200 as fp32", lines["precision"])


@pytest.mark.slow
@pytest.mark.cross
def test_aarch64_classifier_variant_is_bit_exact_under_qemu(classifier_int8, tmp_path):
    """The native runner under qemu-user, on a copy listing 3 of the 12 cases."""
    _, bundles = classifier_int8
    bundle = bundles["aarch64"].path
    assert bundles["aarch64"].manifest.quantization.isa == "dotprod"
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    golden = manifest["golden"]
    manifest["golden"] = [golden[0]] + [g for g in golden if g["name"].startswith("record-")][:2]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = run_native("aarch64", copy, "--check")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert done.stdout.count("max_abs=0 normalised=0 tolerance=0 ") == 3, done.stdout
    assert done.stdout.splitlines()[-1].startswith("check: pass 3/3 worst_normalised=0")
