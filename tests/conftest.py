"""Shared test settings: hypothesis profiles and a quiet, deterministic torch."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant

# CI keeps the example counts small enough for its time budget; `HYPOTHESIS_PROFILE=dev`
# runs many more locally.
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_finish(session):
    """Where the collected tests run the native runner, start building it now, in the
    background (tests/native_runner.py), unless MSCNN_PREBUILD_RUNNERS=0."""
    import native_runner

    if session.config.option.collectonly or os.environ.get("MSCNN_PREBUILD_RUNNERS") == "0":
        return
    uses = (native_runner.run_native, native_runner.runner_for, native_runner.resample_tool)
    modules = {item.module for item in session.items if getattr(item, "module", None)}
    if any(getattr(m, name.__name__, None) is name for m in modules for name in uses):
        native_runner.prebuild()


def pytest_sessionfinish(session):
    import native_runner

    native_runner.stop_prebuild()


@pytest.fixture
def rng():
    """A seeded generator per test: never the global RNG state."""
    return torch.Generator().manual_seed(1234)


# Bundles built once per test session (tests/compile and tests/deploy share them): the
# cpsc2019 model for every target, and the lead-wise model's every CinC lead set for
# x86-64, at a short input to keep CI quick.
SAMPLES = 512


@pytest.fixture(scope="session")
def bundle_samples():
    return SAMPLES


@pytest.fixture(scope="session")
def cpsc():
    return mscnn.load_model("cpsc2019")


@pytest.fixture(scope="session")
def leadwise():
    return mscnn.load_model("multi_scopic_leadwise")


@pytest.fixture(scope="session")
def cpsc_bundles(tmp_path_factory, cpsc):
    out = tmp_path_factory.mktemp("bundles")
    variant = resolve_variant(cpsc, "1")
    options = BuildOptions(samples=SAMPLES)
    return {
        name: build(cpsc, target, variant, out, options)
        for name, target in TARGETS.items()
        if target.default  # the others are built on request only
    }


@pytest.fixture(scope="session")
def leadwise_bundles(tmp_path_factory, leadwise):
    out = tmp_path_factory.mktemp("leadwise")
    options = BuildOptions(samples=SAMPLES)
    return {
        spec: build(leadwise, TARGETS["x86_64"], resolve_variant(leadwise, spec), out, options)
        for spec in mscnn.LEAD_SETS
    }


@pytest.fixture(scope="session")
def qrs():
    """The demo QRS detector as `make build` compiles it (trained weights where shipped)."""
    return mscnn.load_model("cpsc2019_qrs")


@pytest.fixture(scope="session")
def qrs_bundles(tmp_path_factory, qrs):
    """The detector for every CPU architecture, at the records' full 10 s window: its
    golden cases include all 50 CPSC2019 records (where ../shared/data is)."""
    out = tmp_path_factory.mktemp("qrs")
    variant = resolve_variant(qrs, "1")
    options = BuildOptions(samples=5000)
    return {
        name: build(qrs, TARGETS[name], variant, out, options)
        for name in ("x86_64", "aarch64", "armv7")
    }


@pytest.fixture(scope="session")
def qrs_int8_bundles(tmp_path_factory, qrs):
    """The detector in int8 for every target with int8 kernels (as `make build` builds
    them): quantized on the real CPSC2019 records, which it needs."""
    from mscnn import data as ecg_data

    if not (ecg_data.data_dir() / ecg_data.CPSC2019_FILE).is_file():
        pytest.skip(f"int8 calibration needs {ecg_data.CPSC2019_FILE} in {ecg_data.data_dir()}")
    out = tmp_path_factory.mktemp("qrs-int8")
    variant = resolve_variant(qrs, "1")
    options = BuildOptions(precision="int8")
    return {
        name: build(qrs, TARGETS[name], variant, out, options)
        for name in ("x86_64", "x86_64-avx512", "aarch64", "armv7")
    }


@pytest.fixture(scope="session")
def qrs_stream_bundles(tmp_path_factory, qrs):
    """The detector's step for hops of 512 samples (~1 s), for x86_64."""
    out = tmp_path_factory.mktemp("qrs-stream")
    variant = resolve_variant(qrs, "1")
    return {"x86_64": build(qrs, TARGETS["x86_64"], variant, out, BuildOptions(hop=512))}


@pytest.fixture(scope="session")
def qrs_stream_arm_bundles(tmp_path_factory, qrs):
    """The detector's step for hops of 512 samples, for aarch64 and armv7 (run under qemu)."""
    out = tmp_path_factory.mktemp("qrs-stream-arm")
    variant = resolve_variant(qrs, "1")
    return {
        arch: build(qrs, TARGETS[arch], variant, out, BuildOptions(hop=512))
        for arch in ("aarch64", "armv7")
    }


@pytest.fixture(scope="session")
def rpc_device():
    """A TVM RPC tracker and server on loopback: the path a real device takes."""
    import time

    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    from deploy.remote import Rpc

    tracker = Tracker("127.0.0.1", port=19190, port_end=19290, silent=True)
    server = rpc.Server(
        "127.0.0.1",
        port=19300,
        port_end=19400,
        key="loopback",
        tracker_addr=("127.0.0.1", tracker.port),
        silent=True,
    )
    try:
        client = rpc.connect_tracker("127.0.0.1", tracker.port)
        for _ in range(100):  # the server registers with the tracker asynchronously
            if "loopback" in client.text_summary():
                break
            time.sleep(0.1)
        yield Rpc("127.0.0.1", tracker.port, "loopback", timeout=300)
    finally:
        server.terminate()
        if tracker.proc is not None:  # kill: its own stop handshake can race the teardown
            tracker.proc.kill()
            tracker.proc = None


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size (optionally read-only); unmounted afterwards."""
    mounts = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(
                f"a small tmpfs cannot be mounted here (needs root with "
                f"CAP_SYS_ADMIN): {done.stderr.strip()}"
            )
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)
