"""`python -m deploy ...` as a user runs it, for the tests of several packages."""

import subprocess
import sys

import numpy as np
import pytest

import mscnn
from mscnn import data as ecg_data

# What deploy detect and deploy stream say on stderr when the record's rate is not given.
RATE_NOTE = (
    "note: assuming 500 Hz, the bundle's rate; pass --fs if the record was sampled otherwise"
)


def deploy(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the deploy CLI in a fresh interpreter; stdout and stderr as text."""
    done = subprocess.run(
        [sys.executable, "-m", "deploy", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=300,
    )
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


def cpsc_record(index: int = 5) -> np.ndarray:
    """A real 10 s CPSC2019 record, float32 mV at 500 Hz (skips where the data is missing)."""
    try:
        return ecg_data.cpsc2019_records().signals[index].astype("<f4")
    except mscnn.MscnnError as exc:
        pytest.skip(f"the CPSC2019 records are not here: {exc}")
