"""Records of any length: every format read in chunks equals the whole read; a window
bundle's stitched windows equal the model on the whole record (tensors within the fp32
tolerance, beats equal); and what the detector holds does not grow with the record."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from deploy_cli import cpsc_record

from deploy.detect import detect
from deploy.longrecord import WindowStream, detect_chunks, halo_samples
from deploy.parity import compare
from deploy.predictor import Predictor
from deploy.recordings import open_recording, read_recording
from deploy.rpeaks import detect_rpeaks
from mscnn import data as ecg_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minute() -> np.ndarray:
    """A minute of real ECG: six 10 s CPSC2019 records end to end, float32 mV, 500 Hz."""
    return np.concatenate([cpsc_record(i) for i in range(6)])


# --------------------------------------------------------------------------------------
# Reading in chunks


def _write_formats(folder, ecg: np.ndarray) -> list:
    wfdb = pytest.importorskip("wfdb", reason="WFDB needs wfdb (the records extra)")
    pyedflib = pytest.importorskip("pyedflib", reason="EDF needs pyedflib (the records extra)")
    signals = np.stack([ecg, -ecg / 2])
    wfdb.wrsamp(
        "rec", fs=360, units=["mV", "uV"], sig_name=["MLII", "V5"],
        p_signal=(signals * [[1], [1000]]).T, fmt=["16", "16"], adc_gain=[200.0, 0.2],
        baseline=[0, 0], write_dir=str(folder),
    )  # fmt: skip
    writer = pyedflib.EdfWriter(str(folder / "rec.edf"), 2, file_type=pyedflib.FILETYPE_EDFPLUS)
    common = dict(sample_frequency=250, digital_max=32767, digital_min=-32768)
    writer.setSignalHeaders([
        dict(label="II", dimension="mV", physical_max=40, physical_min=-40, **common),
        dict(label="V1", dimension="mV", physical_max=40, physical_min=-40, **common),
    ])  # fmt: skip
    writer.writeSamples(list(signals[:, : len(ecg) // 250 * 250]))
    writer.close()
    np.savetxt(folder / "rec.csv", signals.T, delimiter=",", header="I,II", comments="")
    np.save(folder / "rec.npy", signals.astype(np.float32))
    return [folder / name for name in ("rec.hea", "rec.edf", "rec.csv", "rec.npy")]


@pytest.mark.parametrize("size", [7, 333, 1 << 16])
def test_every_format_read_in_chunks_equals_the_whole_read(tmp_path, size):
    ecg = cpsc_record(0)[:1500].astype(np.float64)
    for path in _write_formats(tmp_path, ecg):
        whole = read_recording(path)
        source = open_recording(path)
        assert (source.leads, source.fs, source.source) == (whole.leads, whole.fs, whole.source)
        for rows in ([0, 1], [1]):
            parts = list(source.chunks(rows, size))
            assert all(p.shape[0] == len(rows) and 0 < p.shape[1] <= size for p in parts)
            assert np.array_equal(np.concatenate(parts, axis=1), whole.signals[rows]), path.name


# --------------------------------------------------------------------------------------
# A window bundle on a long record


def test_the_halo_covers_the_receptive_field(qrs_bundles):
    m = qrs_bundles["x86_64"].manifest
    halo = halo_samples(m)
    assert halo % m.detect.reduction == 0 and 2 * halo >= m.model.receptive_field
    assert 2 * halo < m.input.shape[2]  # stitching is possible: windows advance


@pytest.mark.parametrize("length", [30000, 29997, 5000, 5007])
def test_stitched_windows_equal_the_model_on_the_whole_record(qrs, qrs_bundles, minute, length):
    """Any chunking, any length from one window up: the frames are PyTorch's on the whole
    record (its whole frames: the last length mod 8 samples are no frame) within the fp32
    tolerance, and the beats are the same."""
    bundle = qrs_bundles["x86_64"]
    x = minute[:length]
    whole = length // 8 * 8
    with torch.no_grad():
        reference = qrs.model.eval()(torch.from_numpy(x[:whole])[None, None])[0, :, 0].numpy()
    windows = WindowStream(Predictor(bundle))
    sizes = np.random.default_rng(length).integers(1, 7000, 40)
    cuts = np.cumsum(sizes)[np.cumsum(sizes) < length]
    parts = [windows.push(c[None]) for c in np.split(x, cuts)] + [windows.flush()]
    got = np.concatenate(parts, axis=1)[0]
    assert compare(got, reference, "cpu").passed, compare(got, reference, "cpu")
    rule = bundle.manifest.detect
    found, _ = detect_chunks(bundle, [c[None] for c in np.split(x, cuts)], 500)
    assert np.array_equal(found.beats, detect_rpeaks(reference, rule, whole))


def test_a_long_record_gives_the_stream_bundles_beats(qrs_bundles, qrs_stream_bundles, minute):
    windowed, _ = detect_chunks(qrs_bundles["x86_64"], [minute[None]])
    streamed = detect(qrs_stream_bundles["x86_64"], minute)
    assert np.array_equal(windowed.beats, streamed.beats) and len(windowed.beats) > 50
    assert windowed.heart_rate_bpm == streamed.heart_rate_bpm


# --------------------------------------------------------------------------------------
# Memory that does not grow with the record


def _peak_bytes(bundle, minutes: int) -> int:
    """Peak numpy memory (tracemalloc) of detecting `minutes` of tiled real ECG, handed
    over chunk by chunk as a reader does: the record itself is never whole in memory."""
    tile = np.concatenate([ecg_data.cpsc2019_records().signals[i] for i in range(6)])
    tile = tile.astype(np.float32)[None]

    def chunks():
        for _ in range(minutes):
            yield from np.array_split(tile, 7, axis=1)

    tracemalloc.start()
    try:
        found, _ = detect_chunks(bundle, chunks())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.samples == minutes * tile.shape[1]
    return peak


@pytest.mark.parametrize("kind", ["window", "stream"])
def test_peak_memory_of_8_minutes_is_that_of_2(qrs_bundles, qrs_stream_bundles, kind):
    """Four times the record, the same peak (within 64 KiB: the beats themselves, a few a
    second, are kept): the chunks, windows, resampler and beat rule let go of what they
    have used."""
    bundle = (qrs_bundles if kind == "window" else qrs_stream_bundles)["x86_64"]
    two, eight = _peak_bytes(bundle, 2), _peak_bytes(bundle, 8)
    # held whole, the 6 minutes more would add 720 KB (float32 at 500 Hz)
    assert eight <= two + (64 << 10), (two, eight)


# VmHWM, the peak resident size of this program (ru_maxrss would carry the peak of the
# process it was forked from, pytest, across the exec)
READ_ALL = """
import re, sys
from deploy.recordings import open_recording
source = open_recording(sys.argv[1])
n = sum(chunk.shape[1] for chunk in source.chunks([0]))
status = open("/proc/self/status").read()
print(n, re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
"""


def test_a_mapped_npy_read_to_its_end_stays_the_size_of_a_chunk(tmp_path):
    """A .npy four times as long costs no more resident memory to read through: the
    mapped pages read are given back (a mapped page once touched would otherwise count as
    the process's, and a 24 h record is 173 MB)."""
    peaks = {}
    for samples in (6_000_000, 24_000_000):  # 24 MB and 96 MB of float32
        path = tmp_path / f"{samples}.npy"
        np.lib.format.open_memmap(path, mode="w+", dtype="<f4", shape=(1, samples))[:] = 0.5
        done = subprocess.run(
            [sys.executable, "-c", READ_ALL, str(path)], capture_output=True, text=True, check=True
        )
        n, peak_kb = map(int, done.stdout.split())
        assert n == samples
        peaks[samples] = peak_kb
    assert peaks[24_000_000] <= peaks[6_000_000] + 8 * 1024, peaks  # within 8 MB
