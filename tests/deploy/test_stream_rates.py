"""`deploy stream --fs R`: a real record at R streamed through the 500 Hz stream bundle,
resampled as its chunks arrive, gives `deploy detect --fs R`'s beats, heart rate and
clock, whatever the chunk size; the resampler holds a bounded number of samples."""

import json

import numpy as np
import pytest
from deploy_cli import cpsc_record

from deploy.cli import main
from deploy.detect import detect
from deploy.resample import resample
from deploy.streaming_cli import open_run

pytestmark = pytest.mark.slow  # the stream bundle fixture compiles the detector


@pytest.fixture(scope="module")
def half_minute() -> np.ndarray:
    """30 s of real ECG (three CPSC2019 records back to back), 500 Hz float32 mV."""
    return np.concatenate([cpsc_record(i) for i in range(3)])


@pytest.mark.parametrize(("fs", "chunk"), [(360, 97), (128, 1000)])
def test_the_stream_gives_detects_beats(qrs_stream_bundles, half_minute, tmp_path, fs, chunk):
    bundle = qrs_stream_bundles["x86_64"]
    x = resample(half_minute, 500, fs)
    x.tofile(tmp_path / "rec.f32")
    want = detect(bundle, x, fs)
    assert len(want.beats) >= 25 and want.fs_input == fs

    run = open_run(bundle.path, tmp_path / "rec.f32", fs, chunk, detect=True)
    kept = []
    beats = []
    for b in run.beats():  # as they become final
        beats.append(b)
        kept.append(run.rate.held)
    assert beats == want.beats.tolist()
    assert 0 < max(kept) <= 21  # the taps of one phase of the filter, not the record
    found = open_run(bundle.path, tmp_path / "rec.f32", fs, chunk, detect=True).detection()
    assert found.to_json() == want.to_json()


def test_the_cli_prints_the_records_clock(qrs_stream_bundles, half_minute, tmp_path, capsys):
    """Beat lines in the record's samples and seconds; --json is deploy detect --json's,
    and both say that the record was resampled (in-process: the CLI's own main)."""
    bundle = str(qrs_stream_bundles["x86_64"].path)
    x = resample(half_minute, 500, 360)
    np.save(tmp_path / "rec.npy", x)
    rec = ["--input", str(tmp_path / "rec.npy"), "--fs", "360"]
    note = (
        "note: resampled from 360 Hz (the record's) to 500 Hz (the bundle's); beats are in "
        "the record's samples\n"
    )
    outputs = []
    for args in (["stream", bundle, "--detect", *rec], ["stream", bundle, "--detect", "--json",
                 *rec], ["detect", bundle, "--json", *rec]):  # fmt: skip
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert err == note
        outputs.append(out)
    found = json.loads(outputs[1])
    assert found == json.loads(outputs[2])
    assert outputs[0].splitlines() == [f"beat {b} {b / 360:.3f}" for b in found["beats"]]
    assert (found["fs"], found["fs_input"], found["samples"]) == (500, 360, len(x))
