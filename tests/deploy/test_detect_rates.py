"""`deploy detect --fs R` on a real 500 Hz record resampled to R (by scipy, an independent
path) finds the 500 Hz record's beats, in R's clock within one frame of reduction."""

import json
import math

import numpy as np
import pytest

import mscnn
from deploy.cli import main
from deploy.detect import detect
from mscnn import data as ecg_data

pytestmark = pytest.mark.slow  # the stream bundle fixture compiles the detector

RATES = (128, 250, 256, 360, 500, 512, 1000)


def test_every_rate_finds_the_500_hz_beats(qrs_stream_bundles, tmp_path, capsys):
    signal = pytest.importorskip("scipy.signal", reason="the independent resampling uses scipy")
    try:
        x = ecg_data.cpsc2019_records().signals[5].astype(np.float64)
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")
    bundle = qrs_stream_bundles["x86_64"]
    reduction = bundle.manifest.detect.reduction
    original = detect(bundle, x.astype(np.float32), 500).beats
    assert len(original) >= 10
    for rate in RATES:
        record = signal.resample_poly(x, rate, 500).astype(np.float32)
        found = detect(bundle, record, rate)
        want = original * rate / 500
        frame = math.ceil(reduction * rate / 500)  # one frame, in the record's samples
        assert len(found.beats) == len(original), rate
        assert np.abs(found.beats - want).max() <= frame, (rate, found.beats, want)
        assert (found.samples, found.input_fs) == (len(record), rate)
    np.save(tmp_path / "rec.npy", record)  # the last rate, 1000 Hz, through the CLI
    assert main(["detect", str(bundle.path), "--input", str(tmp_path / "rec.npy"),
                 "--fs", "1000", "--json"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert (result["fs"], result["fs_input"], result["samples"]) == (500, 1000, 10000)
    assert result["beats"] == found.beats.tolist()
    assert result["beats_s"] == [b / 1000 for b in found.beats.tolist()]
    assert err.strip() == (
        "note: resampled from 1000 Hz (the record's) to 500 Hz (the bundle's); beats are in "
        "the record's samples"
    )
