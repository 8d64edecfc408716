"""What a Cortex-M package promises, checked without building one: parts as memory
regions (the arena in one of them), the firmware's R-peak rule (deploy/mcu/rpeaks.c,
compiled for this host) against deploy.rpeaks, the threshold it compares with, and the
build folders' names. The packages themselves are built and run in test_mcu.py."""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from compile.errors import CompileError
from compile.mcu import firmware as mcu
from compile.mcu.aot import rpeak_threshold
from compile.mcu.boards import PARTS, KiB, MiB
from deploy.manifest import McuFootprint
from deploy.rpeaks import RPeakRule, detect_rpeaks

# The Cortex-M7 streams, hop 200: fp32 as measured, int8 as docs/microcontrollers.md
# rounds it (KiB).
FP32_STREAM = McuFootprint(98_072, 1_033_280, 618_560, 1_272, 16 * KiB)
INT8_STREAM = McuFootprint(109_568, 532_480, 120_832, 1_272, 16 * KiB)


def test_parts_are_their_memory_regions():
    h7 = PARTS["stm32h7"]
    ram = {r.name: (r.base, r.size) for r in h7.ram_regions}
    assert ram == {
        "DTCM": (0x2000_0000, 128 * KiB),
        "AXI_SRAM": (0x2400_0000, 512 * KiB),
        "SRAM1_3": (0x3000_0000, 288 * KiB),
        "SRAM4": (0x3800_0000, 64 * KiB),
    }
    assert (h7.flash_region.base, h7.flash_region.size) == (0x0800_0000, 2 * MiB)
    assert h7.arena_region.name == "AXI_SRAM" and h7.ram_bytes == 992 * KiB
    nrf = PARTS["nrf52840"]
    assert [(r.name, r.base, r.size) for r in nrf.regions] == [
        ("FLASH", 0, MiB),
        ("RAM", 0x2000_0000, 256 * KiB),
    ]


def test_the_fp32_stream_fits_no_stm32h7_region_though_its_total_would():
    """604 KiB of arena in one array: more than the H743's largest RAM block (512 KiB AXI
    SRAM), though all its RAM (992 KiB) would hold the 621 KiB the firmware needs."""
    fit = mcu.place(FP32_STREAM, PARTS["stm32h7"])
    assert FP32_STREAM.ram < PARTS["stm32h7"].ram_bytes
    assert not fit.fits and fit.arena_region == "AXI_SRAM"
    assert fit.arena_region_bytes == 512 * KiB and fit.arena_used == pytest.approx(1.18, abs=0.01)
    assert fit.why == (
        "the arena needs 604.1 KiB in one block, AXI_SRAM at 0x24000000 (its largest RAM "
        "region) holds 512.0 KiB"
    )
    with pytest.raises(CompileError, match=r"does not fit STM32H743.*604\.1 KiB in one block"):
        mcu.check_fit(FP32_STREAM, PARTS["stm32h7"], "the stream step")
    int8 = mcu.place(INT8_STREAM, PARTS["stm32h7"])
    assert int8.fits and int8.why is None and int8.arena_used < 0.25
    assert mcu.fit_table(INT8_STREAM)["nrf52840"].fits
    assert not mcu.fit_table(FP32_STREAM)["nrf52840"].fits
    assert mcu.fit_table(FP32_STREAM)["m55-hp"].fits  # one 1 MB block


def test_the_rest_of_ram_goes_beside_the_arena_or_to_another_region():
    full = McuFootprint(1000, 1000, 512 * KiB, 1_000, 16 * KiB)  # AXI SRAM full: DTCM
    assert mcu.place(full, PARTS["stm32h7"]).fits
    nrf = McuFootprint(1000, 1000, 250 * KiB, 1_000, 16 * KiB)  # one block: no room
    fit = mcu.place(nrf, PARTS["nrf52840"])
    assert not fit.fits and "fit neither beside the arena in RAM (6.0 KiB left)" in fit.why


def test_a_board_is_checked_as_its_one_flash_and_ram():
    board = mcu.BOARDS["mps3-an547"].memory
    assert [(r.name, r.base) for r in board.regions] == [
        ("FLASH", 0x0100_0000),
        ("RAM", 0x2100_0000),
    ]
    mcu.check_fit(FP32_STREAM, board, "the stream step")  # qemu's boards hold it


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.7, 0.9, 0.123456789])
def test_the_firmware_threshold_is_the_float64_test_on_float32_logits(threshold):
    rule = RPeakRule(threshold=threshold)
    f = np.float32(rpeak_threshold(rule))
    assert float(f) == rpeak_threshold(rule)  # a float32 value, written exactly in C
    around = [f]
    for _ in range(3):
        around = [np.nextafter(around[0], np.float32(-1e9)), *around]
        around.append(np.nextafter(around[-1], np.float32(1e9)))
    for x in around:
        assert (x > f) == (float(x) > rule.logit_threshold), (x, f)


@pytest.fixture(scope="module")
def beats_c(tmp_path_factory):
    """deploy/mcu/rpeaks.c built for this host, with a driver that streams one record's
    logits frame by frame, takes the beats as they come, and finishes the record."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a host C compiler (cc or gcc) to build deploy/mcu/rpeaks.c")
    folder = tmp_path_factory.mktemp("rpeaks")
    (folder / "driver.c").write_text(DRIVER)
    lib = folder / "librpeaks.so"
    subprocess.run(
        [cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
         "-I", str(mcu.FIRMWARE_DIR), str(mcu.FIRMWARE_DIR / "rpeaks.c"),
         str(folder / "driver.c"), "-o", str(lib)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    dll = ctypes.CDLL(str(lib))
    dll.stream_beats.restype = ctypes.c_int64
    return dll


DRIVER = r"""
#include "rpeaks.h"
/* Beats of one record, streamed; early[k]: beat k came before the record ended.
 * Returns how many, or -1 - count after an overflow. */
int64_t stream_beats(const float* x, int64_t frames, int64_t n, float threshold,
                     int32_t r, int32_t min_rr, int32_t edge, int64_t* out, uint8_t* early) {
  mscnn_beats_t b;
  int64_t k = 0, s;
  mscnn_beats_init(&b, threshold, r, min_rr, edge);
  for (int64_t i = 0; i < frames; ++i) {
    mscnn_beats_push(&b, x[i]);
    while (mscnn_beats_next(&b, &s)) { early[k] = 1; out[k++] = s; }
  }
  mscnn_beats_finish(&b, n);
  while (mscnn_beats_next(&b, &s)) { early[k] = 0; out[k++] = s; }
  return b.overflows ? -1 - k : k;
}
"""


def _stream(dll, x: np.ndarray, n: int, rule: RPeakRule):
    x = np.ascontiguousarray(x, np.float32)
    out, early = np.zeros(len(x) + 1, np.int64), np.zeros(len(x) + 1, np.uint8)
    k = dll.stream_beats(
        x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(x)), ctypes.c_int64(n),
        ctypes.c_float(rpeak_threshold(rule)), rule.reduction, rule.min_rr_samples,
        rule.edge_samples, out.ctypes.data_as(ctypes.c_void_p),
        early.ctypes.data_as(ctypes.c_void_p),
    )  # fmt: skip
    return (None, None) if k < 0 else (out[:k], early[:k].astype(bool))


def _logits(rng, frames: int, kind: int) -> np.ndarray:
    if kind == 0:  # noise around the threshold
        return rng.normal(-1, 2, frames).astype(np.float32)
    if kind == 1:  # few values: many equal strengths (the rule's tie-break)
        return rng.choice([-1.0, 0.5, 1.0, 2.0], frames).astype(np.float32)
    if kind == 2:  # sparse runs
        return np.where(rng.random(frames) < 0.3, rng.random(frames) * 5, -1.0).astype(np.float32)
    t = np.arange(frames)  # beat-like: a bump every ~50-90 frames, with jitter
    period = rng.integers(50, 90)
    x = 6.0 * np.exp(-(((t % period) - period / 2) ** 2) / 4.0) - 3.0
    return (x + rng.normal(0, 0.8, frames)).astype(np.float32)


def test_the_firmware_rule_is_the_python_rule_beat_for_beat(beats_c):
    """Random and ECG-like logits, every rule parameter, records not a whole number of
    frames: the C rule, fed frame by frame, gives deploy.rpeaks' beats exactly. With the
    detector's rule (8 samples a frame, 200 ms, 50 ms) its queue never overflows, and on
    ECG-like logits a beat is out before the record ends unless it lies in its last 141
    samples (min RR + edge + two frames)."""
    rng = np.random.default_rng(0)
    overflows = 0
    for trial in range(3000):
        frames = int(rng.integers(1, 600))
        x = _logits(rng, frames, trial % 4)
        detector = trial % 2 == 0
        rule = RPeakRule(
            threshold=0.5 if detector else float(rng.choice([0.3, 0.7, 0.9])),
            min_rr_ms=200 if detector else int(rng.choice([0, 50, 100, 300])),
            edge_ms=50 if detector else int(rng.choice([0, 20, 50])),
            reduction=8 if detector else int(rng.choice([1, 4, 8, 16])),
        )
        n = frames * rule.reduction - int(rng.integers(0, rule.reduction))
        got, early = _stream(beats_c, x, n, rule)
        if got is None:
            assert not detector, (trial, rule)
            overflows += 1
            continue
        want = detect_rpeaks(x, rule, n)
        assert np.array_equal(got, want), (trial, rule, n, got, want)
        if detector and trial % 4 == 3:  # ECG-like: runs end, beats come out as they go
            late = got[~early]
            assert (late >= frames * rule.reduction - 125 - 2 * rule.reduction).all()
    assert overflows < 300  # only chains longer than 32 candidates (1-sample frames)


def test_build_folders_are_named_as_make_names_them():
    """`make build` and `make package` write build/mcu/<core>-stream<hop>-<precision>."""
    assert mcu.build_name("cortex-m7", 200, 5000, "fp32", "int16") == "cortex-m7-stream200-fp32"
    assert mcu.build_name("cortex-m7", 200, 5000, "int8", "int16") == "cortex-m7-stream200-int8"
    assert mcu.build_name("cortex-m55", 200, 5000, "int8", "int8") == "cortex-m55-stream200-int8"
    assert (
        mcu.build_name("cortex-m7", 200, 5000, "int8", "int8") == "cortex-m7-stream200-int8-int8w"
    )
    assert mcu.build_name("cortex-m4", None, 2400, "fp32", "int16") == "cortex-m4-window2400-fp32"
