"""int8 stream bundles: the int8 step compiled for a CPU target, streamed as a device
streams it, equals the int8 reference on the whole record bit for bit, with its beats;
its state is integers in the manifest and the native runner takes them."""

import numpy as np
import pytest
from native_runner import run_native

from compile import TARGETS, BuildOptions, build, resolve_variant
from compile.int8 import quantize
from deploy.bundle import cpu_flags
from deploy.stream import open_stream
from mscnn import data as ecg_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_streams(tmp_path_factory, qrs):
    out = tmp_path_factory.mktemp("qrs-stream-int8")
    variant = resolve_variant(qrs, "1")
    options = BuildOptions(hop=512, precision="int8")
    targets = ["aarch64"] + (["x86_64-avx512"] if "avx512_vnni" in cpu_flags() else [])
    return {t: build(qrs, TARGETS[t], variant, out, options) for t in targets}


@pytest.fixture(scope="module")
def qdetector(qrs):
    records = quantize.CALIBRATION_RECORDS
    return quantize.quantize_model(qrs.model, quantize.real_ecg(qrs.leads, records))


def test_manifest_holds_an_int8_stream(int8_streams):
    m = int8_streams["aarch64"].manifest
    assert m.kind == "stream" and m.precision == "int8" and m.tolerance_kind == "int8"
    assert m.quantization.isa == "dotprod" and m.stream.hop == 512
    dtypes = {s.dtype for s in m.stream.states}
    assert dtypes == {"int64", "int16", "int8", "uint8"}
    assert m.stream.state_bytes == sum(
        np.dtype(s.dtype).itemsize * int(np.prod(s.shape)) for s in m.stream.states[2:]
    )
    assert m.stream.state_bytes < 40 * 1024  # fp32's step holds 147 KiB


def test_streamed_in_process_equals_the_int8_reference(int8_streams, qdetector):
    """x86 with VNNI (vpdpbusd): a record the golden case does not hold, in uneven chunks."""
    if "x86_64-avx512" not in int8_streams:
        pytest.skip("this CPU has no AVX-512 VNNI: the x86 int8 step cannot run here")
    bundle = int8_streams["x86_64-avx512"]
    assert bundle.manifest.parity.tvm.passed and bundle.manifest.parity.task.passed
    record = ecg_data.cpsc2019_records().signals[40:44].reshape(1, -1)[:, :17777]
    stream = open_stream(bundle)
    parts, at = [], 0
    for n in np.random.default_rng(3).integers(1, 2500, size=12):
        parts.append(stream.push(record[:, at : at + n]))
        at += n
    parts += [stream.push(record[:, at:]), stream.flush()]
    want = quantize.run_int8(qdetector, record[None])[0].T  # (classes, frames)
    assert np.array_equal(np.concatenate(parts, axis=1), want)


def test_native_runner_streams_it_under_qemu(int8_streams):
    """aarch64 (sdot), the native runner under qemu-aarch64: the golden minute bit for
    bit, with the reference's beats."""
    done = run_native("aarch64", int8_streams["aarch64"].path, "--check", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "worst_normalised=0 " in done.stdout and "beats=1/1" in done.stdout
