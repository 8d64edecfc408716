"""The benchmark runs end to end and records what it claims; no timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mscnn

ROOT = Path(__file__).resolve().parents[2]


def test_bench_writes_table_json_and_chart(cpsc_bundles, tmp_path):
    folder = cpsc_bundles["x86_64"].path.parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "compile",
            "bench",
            str(folder),
            "--targets",
            "x86_64",
            "--threads",
            "1",
            "--rounds",
            "1",
            "--runs",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "cpsc2019-1lead" in done.stdout and "TVM/ORT" in done.stdout
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["threads"] == 1 and "FMA" in data["peak_derivation"]
    assert data["goals"] == []  # the goals are the avx512 bundles'; this run timed x86_64's
    assert data["measured_fma_gflops"] is None or data["measured_fma_gflops"] > 0
    (row,) = data["rows"]
    # The MACs behind every GFLOP/s figure, against torch's own FLOP counter (2 per MAC)
    # on the same model and input shape: an oracle that shares nothing with count_macs.
    model = mscnn.load_model("cpsc2019").model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(row["batch"], 1, row["samples"]))
    assert row["macs"] == counter.get_total_flops() // 2
    for t in row["timings"].values():
        assert t["gflops"] == pytest.approx(2 * row["macs"] / t["median_ms"] / 1e6, rel=1e-9)
    assert set(row["timings"]) == {
        "pytorch",
        "onnxruntime",
        "tvm",
        "tvm-default-tile",
        "tvm-arm-rule",
        "tvm-untuned",
    }
    assert row["timings"]["onnxruntime"]["ratio_to_ort"] == 1.0
    assert row["timings"]["onnxruntime"]["paired_ratio_to_ort"] == 1.0
    assert all(t["paired_ratio_to_ort"] > 0 for t in row["timings"].values())
    assert "paired" in done.stdout
    assert all(
        t["runs"] == 2 and t["min_ms"] <= t["median_ms"] <= t["p90_ms"]
        for t in row["timings"].values()
    )
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_bundles_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "compile", "bench", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "no bundles of x86_64" in done.stderr


def test_bench_skips_stream_and_reduced_precision_bundles(qrs_stream_bundles, qrs_int8_bundles):
    """`make bench` builds stream bundles into the folder it times: a second run found
    them and failed on their golden case. They are timed by bench-stream (and int8 by
    int8_bench); run_bench says so and goes on."""
    from compile.bench.window import run_bench

    said = []
    paths = [qrs_stream_bundles["x86_64"].path, qrs_int8_bundles["x86_64"].path]
    assert run_bench(paths, threads=1, rounds=1, runs=1, say=said.append) == []
    assert any("stream bundles are timed by bench-stream" in s for s in said), said
    assert any("int8 bundles are timed by" in s for s in said), said


def test_the_fp32_goals_are_computed_against_the_fastest_peer_and_the_measured_peak():
    from compile.bench.window import BenchRow, Timing, goals

    def row(variant, target, ms, batch=1):
        timings = {
            name: Timing(name, median, median, median, 5, 2 * 3.3e9 / median / 1e6)
            for name, median in ms.items()
        }
        timings["tvm"].paired_ratio_to_ort = 0.95
        return BenchRow("p", variant, target, batch, 5000, int(3.3e9), 1, 1, 1, "", timings)

    rows = [
        row(
            "multi_scopic_leadwise-12lead",
            "x86_64-avx512",
            {"onnxruntime": 40.0, "litert-fp32": 36.0, "tvm": 33.0},
        ),
        row("cpsc2019-1lead", "x86_64-avx512", {"onnxruntime": 4.0, "tvm": 5.0}),
        row("cpsc2019-1lead", "x86_64", {"onnxruntime": 4.0, "tvm": 1.0}),  # AVX2: no goal
        row("cpsc2019-1lead", "x86_64-avx512", {"onnxruntime": 4.0, "tvm": 1.0}, batch=8),
    ]
    lines = goals(rows, fma_peak=250.0, threads=2)
    assert lines == [
        "goal: multi_scopic_leadwise-12lead TVM / fastest fp32 peer (litert-fp32) = 0.92 (<= 1.0)",
        "goal: multi_scopic_leadwise-12lead TVM at 80% of the measured FMA peak "
        "(250 GFLOP/s on 2 threads) (>= 80%)",
        "goal: cpsc2019-1lead TVM / fastest fp32 peer (onnxruntime) = 1.25, paired 0.95 (<= 1.0)",
    ]
    assert "not measured: no AVX-512" in goals(rows, None, 2)[1]
    rows[0].paired_peak_share = 0.8149
    assert goals(rows, fma_peak=250.0, threads=2)[1].endswith("threads), paired 81% (>= 80%)")


def test_the_paired_peak_share_compares_each_round_with_the_loop_in_the_same_spell():
    """Rounds where the host ran slow slow both TVM and the FMA loop timed right after it:
    the share is the same in every round, where one peak measured once would not say so."""
    from compile.bench.window import paired_peak_share

    # TVM: 2 GFLOP in 10 ms (fast) or 15 ms (slow); the loop: 1 GFLOP in 4 or 6 ms
    ours = [[10.0, 10.2, 9.9], [15.0, 15.1, 14.8], [15.2, 15.0, 15.3]]
    loop = [[4.0, 4.1], [6.0, 6.2], [6.0, 6.05]]
    assert paired_peak_share(ours, loop, 2e9, 1e9) == pytest.approx(0.8, rel=0.02)
    # against the fast loop in every round, the slow rounds read as a third less
    assert paired_peak_share(ours, [[4.0, 4.1]] * 3, 2e9, 1e9) == pytest.approx(0.53, rel=0.02)


def test_the_int8_goals_are_computed_against_the_peers_the_vnni_peak_and_avx2_fp32():
    from compile.bench.int8 import Int8Bench

    def timing(ms):
        return {"median_ms": ms, "p90_ms": ms, "min_ms": ms, "runs": 5, "gops": 2 * 316 / ms}

    ms = {"ort-fp32": 5.0, "ort-int8": 4.0, "tvm-fp32": 3.0, "tvm-int8": 1.0}
    ms |= {"tvm-fp32-avx2": 5.0, "tvm-int8-avx2": 2.5, "litert-fp32": 4.0, "litert-int8": 2.0}
    timings = {name: timing(v) for name, v in ms.items()}
    for r in timings.values():
        for key in ("vs_ort_fp32", "vs_ort_int8", "min_vs_ort_fp32", "min_vs_ort_int8"):
            r[key] = 1.0
    peaks = {"fp32-fma": 234.0, "int8-vnni": 1000.0}
    accuracy = {"tvm-int8": {"score": 0.9, "f1": 0.98, "fp": 1, "fn": 1, "normalized_error": 0}}
    bench = Int8Bench("CPU", 2, 5000, 316_000_000, peaks, timings, accuracy, {}, (0, 0, 0))
    assert bench.goals() == [
        "goal: tvm-fp32 / fastest fp32 peer (litert-fp32) = 0.75 (<= 1.0)",
        "goal: tvm-int8 / fastest int8 peer (litert-int8) = 0.50 (<= 1.0)",
        "goal: tvm-int8 at 63% of the measured VNNI peak (1000 GOP/s on 2 threads) (>= 60%)",
        "goal: tvm-int8-avx2 / tvm-fp32-avx2 = 0.50 (<= 0.6)",
    ]
    timings["tvm-int8"]["paired_peak_share"] = 0.7049
    assert bench.goals()[2].endswith("GOP/s on 2 threads), paired 70% (>= 60%)")
    table = bench.table()
    assert all(line in table for line in bench.goals())
    avx2_row = next(line for line in table.splitlines() if line.startswith("tvm-int8-avx2"))
    assert avx2_row.split()[5] == "-"  # no share of a 512-bit peak for an AVX2 row
