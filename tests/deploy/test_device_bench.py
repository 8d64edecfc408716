"""`python -m deploy bench`: TVM latency of bundles here or on a device through RPC.
It records figures; no timing is asserted beyond being a positive, ordered statistic."""

import json
import subprocess
import sys

import pytest

from deploy import load_bundle
from deploy.remote import Device, time_bundle


def bench(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "deploy", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_here_prints_and_saves_the_figures(cpsc_bundles, leadwise_bundles, tmp_path):
    paths = [cpsc_bundles["x86_64"].path, leadwise_bundles["2"].path]
    out = tmp_path / "t.json"
    run = bench(*paths, "--threads", 1, "--repeat", 3, "--min-repeat-ms", 5, "--json", out)
    assert run.returncode == 0, run.stderr
    assert "cpsc2019-1lead" in run.stdout and "multi_scopic_leadwise-2lead" in run.stdout
    rows = json.loads(out.read_text())
    assert [r["bundle"] for r in rows] == ["cpsc2019-1lead", "multi_scopic_leadwise-2lead"]
    for r in rows:
        assert r["repeats"] == 3 and r["threads"] == 1 and r["where"] == "local"
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]


@pytest.mark.slow
def test_bench_on_a_device_through_rpc(cpsc_bundles, rpc_device):
    bundle = load_bundle(cpsc_bundles["x86_64"].path)
    timing = time_bundle(bundle, Device(rpc_device), threads=1, repeat=3, min_repeat_ms=5)
    assert timing.where == str(rpc_device) and 0 < timing.min_ms <= timing.median_ms
    run = bench(
        bundle.path,
        "--repeat",
        2,
        "--min-repeat-ms",
        5,
        "--rpc-tracker",
        f"{rpc_device.host}:{rpc_device.port}",
        "--rpc-key",
        rpc_device.key,
    )
    assert run.returncode == 0, run.stderr
    assert "loopback via tracker" in run.stdout


@pytest.mark.parametrize(
    ("target", "expected"),
    [("aarch64", "cannot run here"), ("cuda", "times CPU bundles")],
)
def test_bundles_this_machine_cannot_time_are_refused(cpsc_bundles, target, expected):
    run = bench(cpsc_bundles[target].path)
    assert run.returncode == 2 and expected in run.stderr and "Traceback" not in run.stderr


def test_bench_checks_hashes_before_timing(bundle_copy):
    path = bundle_copy()
    library = path / "model.so"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    run = bench(path)
    assert run.returncode == 2 and "sha256" in run.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--rpc-tracker", "nohost"], "not HOST:PORT"),
        (["--rpc-key", "k"], "needs --rpc-tracker"),
        (
            ["--rpc-tracker", "127.0.0.1:9", "--rpc-key", "k", "--rpc-wait", "2"],
            "cannot get a device",
        ),
        (["--rpc-tracker", "127.0.0.1:9", "--rpc-key", "k", "--rpc-wait", "-1"], "0 or more"),
        (["--repeat", "0"], "positive integer"),
    ],
)
def test_bench_option_errors(cpsc_bundles, args, expected):
    run = bench(cpsc_bundles["x86_64"].path, *args, timeout=120)
    assert run.returncode == 2 and expected in run.stderr and "Traceback" not in run.stderr
