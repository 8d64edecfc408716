"""`make build`: bundles are real make targets, rebuilt only when an input changes."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import mscnn
from compile import TARGETS, default_variants
from compile.mcu.boards import CORES

ROOT = Path(__file__).resolve().parents[2]

DEFAULT = {n: t for n, t in TARGETS.items() if t.default}  # the others: on request


def make(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_default_matrix_matches_the_python_defaults():
    """The Makefile's matrix: every target x every variant of the three default presets
    (the lead-wise backbone, the 1-lead backbone, the trained QRS detector), and the
    detector in int8 for every target that has int8 kernels (the CPUs) and in fp16 for
    every target with half-precision arithmetic (aarch64)."""
    done = make("print-bundles", "BUILD=b")
    got = set(done.stdout.split())
    fp32 = {
        f"b/{t}/{p}-{v}lead/manifest.json"
        for t in DEFAULT
        for p in ("multi_scopic_leadwise", "cpsc2019", "cpsc2019_qrs")
        for v in default_variants(mscnn.load_model(p))
    }
    int8 = {f"b/{t}/cpsc2019_qrs-1lead-int8/manifest.json" for t in DEFAULT if DEFAULT[t].int8}
    assert {t for t in DEFAULT if DEFAULT[t].int8} == {
        "x86_64",
        "x86_64-avx512",
        "aarch64",
        "armv7",
    }
    fp16 = {f"b/{t}/cpsc2019_qrs-1lead-fp16/manifest.json" for t in DEFAULT if DEFAULT[t].fp16}
    assert {t for t in DEFAULT if DEFAULT[t].fp16} == {"aarch64"}
    mcu = {f"b/mcu/{c}-stream200-{p}/mcu.json" for c in CORES for p in ("fp32", "int8")}
    streams = {
        f"b/{t}/cpsc2019_qrs-1lead-stream512{s}/manifest.json"
        for t in DEFAULT
        if DEFAULT[t].int8
        for s in ("", "-int8")
    }
    assert got == fp32 | int8 | fp16 | streams | mcu and len(got) == 61


def test_a_target_outside_the_default_matrix_builds_when_named():
    """x86_64-avxvnni (AVX-VNNI, which few machines here run) is in no default build,
    and `make build TARGETS=x86_64-avxvnni` makes its fp32 and int8 detector; likewise
    cuda-hopper, the sm_90 GPU target, its fp32 detector."""
    assert "x86_64-avxvnni" in TARGETS and "x86_64-avxvnni" not in DEFAULT
    done = make("print-bundles", "BUILD=b", "TARGETS=x86_64-avxvnni", "PRESET=cpsc2019_qrs")
    assert set(done.stdout.split()) == {
        f"b/x86_64-avxvnni/cpsc2019_qrs-1lead{s}/manifest.json"
        for s in ("", "-int8", "-stream512", "-stream512-int8")
    }
    # cuda-hopper (sm_90, H100/H200): outside the default matrix, fp32 window bundles only
    assert "cuda-hopper" in TARGETS and "cuda-hopper" not in DEFAULT
    done = make("print-bundles", "BUILD=b", "TARGETS=cuda-hopper", "PRESET=cpsc2019_qrs")
    assert done.stdout.split() == ["b/cuda-hopper/cpsc2019_qrs-1lead/manifest.json"]


def test_the_default_build_holds_the_detectors_stream_bundles():
    """The README streams a record through build/<cpu>/cpsc2019_qrs-1lead-stream512: the
    default build makes it (fp32 and int8), PRECISION= picks one, and a package of a CPU
    target carries it."""
    only_int8 = make(
        "print-bundles", "BUILD=b", "PRECISION=int8", "TARGETS=aarch64", "PRESET=cpsc2019_qrs"
    )
    assert only_int8.stdout.split() == [
        "b/aarch64/cpsc2019_qrs-1lead-int8/manifest.json",
        "b/aarch64/cpsc2019_qrs-1lead-stream512-int8/manifest.json",
    ]
    none = make("print-bundles", "BUILD=b", "PRESET=cpsc2019", "TARGETS=x86_64")
    assert "stream" not in none.stdout
    recipe = make("-n", "build", "BUILD=b", "TARGETS=x86_64", "PRESET=cpsc2019_qrs")
    assert "--hop 512 --precision int8" in recipe.stdout.replace("\\\n", "")
    package = make("-n", "package", "BUILD=b", "TARGET=armv7", "PRESET=cpsc2019_qrs")
    assert "b/armv7/cpsc2019_qrs-1lead-stream512/manifest.json" in package.stdout


def test_cortex_m_builds_follow_targets_precision_and_preset():
    """The streaming detector per Cortex-M core in TARGETS, per precision asked; none
    when the detector is not among the presets."""
    m7_int8 = make("print-bundles", "BUILD=b", "TARGETS=cortex-m7", "PRECISION=int8")
    assert m7_int8.stdout.split() == ["b/mcu/cortex-m7-stream200-int8/mcu.json"]
    m4 = make("print-bundles", "BUILD=b", "TARGETS=x86_64,cortex-m4", "PRESET=cpsc2019_qrs")
    assert {b for b in m4.stdout.split() if "/mcu/" in b} == {
        "b/mcu/cortex-m4-stream200-fp32/mcu.json",
        "b/mcu/cortex-m4-stream200-int8/mcu.json",
    }
    none = make("print-bundles", "BUILD=b", "TARGETS=cortex-m7", "PRESET=cpsc2019")
    assert none.stdout.split() == []
    recipe = make("-n", "build", "BUILD=b", "TARGETS=cortex-m7", "PRECISION=int8")
    assert "-m compile mcu --target cortex-m7 --hop 200 --samples 5000 --precision int8" in (
        recipe.stdout
    )
    assert "--folder b/mcu/cortex-m7-stream200-int8" in recipe.stdout


def test_precision_picks_the_matrix():
    only_int8 = make(
        "print-bundles", "BUILD=b", "PRECISION=int8", "PRESET=cpsc2019", "TARGETS=x86_64,cuda"
    )
    assert only_int8.stdout.split() == ["b/x86_64/cpsc2019-1lead-int8/manifest.json"]
    only_fp32 = make("print-bundles", "BUILD=b", "PRECISION=fp32", "TARGETS=armv7")
    assert all("int8" not in b for b in only_fp32.stdout.split())
    assert len(only_fp32.stdout.split()) == 8  # 7 windows and the detector's fp32 stream
    only_fp16 = make("print-bundles", "BUILD=b", "PRECISION=fp16", "PRESET=cpsc2019")
    assert only_fp16.stdout.split() == ["b/aarch64/cpsc2019-1lead-fp16/manifest.json"]
    wrong = make("print-bundles", "PRECISION=bf16")
    assert wrong.returncode != 0 and "PRECISION=bf16: choose fp32, int8 or fp16" in wrong.stderr


def test_the_classifier_builds_on_request():
    done = make("print-bundles", "BUILD=b", "PRESET=leadwise_classifier", "TARGETS=x86_64")
    assert set(done.stdout.split()) == {
        f"b/x86_64/leadwise_classifier-{v}lead/manifest.json" for v in (12, 6, 4, 3, 2)
    }


def test_the_lstm_models_build_on_request_for_all_six_targets():
    """torch_ecg's default seq-lab CRNN and the lead-wise CRNN: not in the default build,
    every bundle target on request (their int8 and stream bundles are not asked for)."""
    default = make("print-bundles", "BUILD=b").stdout.split()
    assert not [b for b in default if "crnn" in b]
    done = make("print-bundles", "BUILD=b", "PRESET=seq_lab_crnn,leadwise_crnn")
    targets = ("x86_64", "x86_64-avx512", "aarch64", "armv7", "cuda", "jetson-orin")
    assert sorted(done.stdout.split()) == sorted(
        f"b/{t}/{name}/manifest.json"
        for t in targets
        for name in ("seq_lab_crnn-1lead", "leadwise_crnn-12lead", "leadwise_crnn-3lead")
    )


def test_bench_times_the_seq_lab_crnn():
    """`make bench` builds torch_ecg's default seq-lab CRNN into the folder it then times
    beside ONNX Runtime and PyTorch (a dry run: nothing is built)."""
    lines = make("-n", "bench", "BUILD=b").stdout.splitlines()
    built = [i for i, line in enumerate(lines) if "--preset seq_lab_crnn --out b/bench" in line]
    timed = [i for i, line in enumerate(lines) if "-m compile bench b/bench" in line]
    assert built and timed and built[0] < timed[0]


@pytest.mark.slow
def test_incremental_and_parallel(tmp_path):
    common = [f"BUILD={tmp_path}", "PRESET=cpsc2019", "TARGETS=x86_64,aarch64"]
    first = make("-j2", "build", *common, "SAMPLES=256")
    assert first.returncode == 0, first.stderr
    manifests = [tmp_path / t / "cpsc2019-1lead" / "manifest.json" for t in ("x86_64", "aarch64")]
    stamps = [m.stat().st_mtime_ns for m in manifests]
    assert "x86_64" in first.stdout and "aarch64" in first.stdout  # the summary table

    again = make("build", *common, "SAMPLES=256")
    assert again.returncode == 0, again.stderr
    assert "-m compile build" not in again.stdout
    assert [m.stat().st_mtime_ns for m in manifests] == stamps

    changed = make("build", *common[:2], "TARGETS=x86_64", "SAMPLES=320")
    assert changed.returncode == 0, changed.stderr
    assert "-m compile build" in changed.stdout
    assert json.loads(manifests[0].read_text())["input"]["shape"] == [1, 1, 320]


def test_unknown_target_in_make_is_a_clear_error(tmp_path):
    done = make("build", f"BUILD={tmp_path}", "PRESET=cpsc2019", "TARGETS=arm9")
    assert done.returncode != 0
    assert "unknown target 'arm9'; choose from: x86_64" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_two_parallel_builds_into_one_folder(tmp_path):
    """Two `make -j2 build` at once, same folder: both finish, every bundle is whole."""
    from deploy import load_bundle

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    args = [
        "make",
        "--no-print-directory",
        "-j2",
        "build",
        f"BUILD={tmp_path}",
        "PRESET=cpsc2019",
        "TARGETS=x86_64,aarch64",
        "SAMPLES=256",
    ]
    runs = [
        subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0, out + err
    for target in ("x86_64", "aarch64"):
        bundle = load_bundle(tmp_path / target / "cpsc2019-1lead")  # every hash checks out
        assert bundle.input_shape == (1, 1, 256)
    leftovers = [p.name for p in tmp_path.rglob(".*") if p.is_dir()]
    assert leftovers == []
    assert not list(tmp_path.glob(".options.new*"))


def test_package_for_a_cortex_m_builds_the_streaming_detector():
    done = make("-n", "package", "TARGET=cortex-m7", "BUILD=b")
    assert done.returncode == 0, done.stderr
    assert "-m compile mcu --target cortex-m7 --hop 200 --samples 5000" in done.stdout
    assert "--package b/package" in done.stdout and "deploy package" not in done.stdout
    assert "--precision fp32 --folder b/mcu/cortex-m7-stream200-fp32" in done.stdout
    int8 = make("-n", "package", "TARGET=cortex-m4", "MCU_PRECISION=int8", "BUILD=b")
    assert "-m compile mcu --target cortex-m4" in int8.stdout and "--precision int8" in int8.stdout
    other = make("-n", "package", "TARGET=aarch64", "BUILD=b")
    assert "-m deploy package aarch64" in other.stdout and "compile mcu" not in other.stdout
