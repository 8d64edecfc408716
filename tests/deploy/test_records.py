"""Records from outside: a raw stream's first bytes tell a .npy, a zip or text from
float32 samples (and no real ECG looks like text), and no sample outside an ECG in mV
gets through."""

import io

import numpy as np
import pytest

import mscnn
from deploy.errors import DeployError
from deploy.records import MAX_ABS_MV, check_mv, foreign_format, refuse_foreign
from mscnn import data as ecg_data


def npy_bytes(x) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


FOREIGN = {
    "npy": (npy_bytes(np.zeros(5000, "<f4")), r"starts with a .npy header \(\\x93NUMPY\)"),
    "npz": (npz_bytes(ecg_mv=np.zeros((2, 5000), "<f4")), r"zip archive such as .npz"),
    "wfdb": (b"100 2 360 650000\n100.dat 212 200 11 1024 995 -22131 0 MLII\n", r"\('100 2 360"),
    "csv": (b"time,ecg_mv\n0.000,0.125\n0.002,0.131\n", r"line of text \('time,ecg_mv'\)"),
    "csv_bom": (b"\xef\xbb\xbf0.125\r\n0.131\r\n", r"line of text \('0.125'\)"),
    "numbers": (b"0.125 0.131 0.140 0.152 0.171 0.180 0.191 0.204 0.211 0.230 0.24", "text"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_foreign_streams_are_named_with_the_way_out(case):
    head, message = FOREIGN[case]
    assert foreign_format(head[:64]) == {"npy": "npy", "npz": "zip"}.get(case, "text")
    with pytest.raises(DeployError, match=message) as caught:
        refuse_foreign(head[:64], "stdin")
    text = str(caught.value)
    assert text.startswith("stdin ") and "\n" not in text
    assert "--input" in text  # the flag or conversion that gives it properly


def test_no_real_ecg_reads_as_text():
    """Raw float32 of every real record (1-lead CPSC2019, 12-lead CinC 2021 interleaved)
    never holds 64 bytes of printable ASCII anywhere, so sniffing never refuses one."""
    try:
        signals = [ecg_data.cpsc2019_records().signals[:, None, :]]
        signals.append(ecg_data.cinc2021_records().signals)
    except mscnn.MscnnError as exc:
        pytest.skip(f"the real records are not here: {exc}")
    text = np.zeros(256, bool)
    text[0x20:0x7F] = True
    text[[0x09, 0x0A, 0x0D]] = True
    for records in signals:
        for record in records:
            raw = np.ascontiguousarray(record.T, "<f4").tobytes()
            assert foreign_format(raw[:64]) is None
            runs = np.frombuffer(raw, np.uint8)
            is_text = text[runs].astype(np.int32)
            longest = np.convolve(is_text, np.ones(64, np.int32), "valid").max()
            assert longest < 64


def test_empty_and_raw_heads_are_not_foreign():
    assert foreign_format(b"") is None
    assert foreign_format(b"   \n") is None  # blank: not text to complain about
    assert foreign_format(np.zeros(16, "<f4").tobytes()) is None
    assert foreign_format(np.full(16, 0.5, "<f4").tobytes()) is None


def test_mv_check_names_the_first_sample_in_time_and_its_value():
    x = np.zeros((2, 10), np.float32)
    x[0, 5] = np.nan
    x[1, 3] = -2e4
    with pytest.raises(DeployError) as caught:
        check_mv(x, "stdin", first=1000, leads=["I", "II"])
    assert str(caught.value).startswith(
        "stdin: sample 1003 (lead II) is -20000; not an ECG in mV (|x| <= 10000)"
    )
    x[1, 3] = 0
    with pytest.raises(DeployError, match=r"sample 5 \(lead 0\) is nan; NaN or Inf"):
        check_mv(x, "record")
    x[0, 5] = np.inf
    with pytest.raises(DeployError, match=r"sample 5 \(lead 0\) is inf; NaN or Inf"):
        check_mv(x, "record")


def test_the_mv_limit_is_1e4_inclusive():
    assert MAX_ABS_MV == 1e4  # the C++ runner refuses the same samples
    check_mv(np.array([[1e4, -1e4, 0.0]], np.float32), "record")
    with pytest.raises(DeployError, match=r"sample 1 is 10000"):
        check_mv(np.array([[0.0, np.nextafter(np.float32(1e4), np.float32(2e4))]]), "record")
    with pytest.raises(DeployError, match=r"sample 0 is 30000; .*ADC counts"):
        check_mv(np.array([[30000, 1]], np.int16), "record")  # counts, not mV
