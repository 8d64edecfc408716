"""The firmware's resampler (deploy/mcu/resample.c, with compile/mcu/rates.py's generated
taps) built for this host: against deploy/resample.py on real ECG at the common rates,
both ways, and sample by sample for several leads. The qemu test of the firmware that
uses it is in test_mcu.py."""

import shutil
import subprocess

import numpy as np
import pytest
from deploy_cli import cpsc_record

from compile.mcu import firmware as mcu
from compile.mcu.rates import taps_header
from deploy.resample import rate_pair, resample

RATES = (128, 250, 256, 360, 512, 1000)  # and 500, where nothing is resampled
DRIVER = r"""
#include <stdio.h>
#include "resample.h"
/* Raw float32 samples (MSCNN_LEADS interleaved) on stdin, pushed one by one, then the
 * finish; the outputs on stdout. */
int main(void) {
  mscnn_resampler_t r;
  float x[MSCNN_LEADS], y[MSCNN_RS_MAX_OUT * MSCNN_LEADS];
  size_t n, total = 0;
  mscnn_resample_init(&r);
  while (fread(x, sizeof x, 1, stdin) == 1) {
    n = mscnn_resample_push(&r, x, y);
    fwrite(y, sizeof(float) * MSCNN_LEADS, n, stdout);
    ++total;
  }
  while ((n = mscnn_resample_finish(&r, y)) > 0) fwrite(y, sizeof(float) * MSCNN_LEADS, n, stdout);
  fprintf(stderr, "%u\n", mscnn_resample_length((uint32_t)total));
  return 0;
}
"""


def c_resample(x: np.ndarray, fs_in: int, fs_out: int, folder) -> np.ndarray:
    """x (samples, leads) through resample.c built for these rates; (samples, leads)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a host C compiler (cc or gcc) to build deploy/mcu/resample.c")
    leads = x.shape[1]
    (folder / "model.h").write_text(f"#define MSCNN_LEADS {leads}u\n")
    (folder / "resample_taps.h").write_text(taps_header(rate_pair(fs_in, fs_out)))
    (folder / "driver.c").write_text(DRIVER)
    exe = folder / f"resample-{fs_in}-{fs_out}-{leads}"
    subprocess.run(
        [cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(folder),
         "-I", str(mcu.FIRMWARE_DIR), str(mcu.FIRMWARE_DIR / "resample.c"),
         str(folder / "driver.c"), "-o", str(exe)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    done = subprocess.run([exe], input=np.ascontiguousarray(x, "<f4").tobytes(),
                          capture_output=True, check=True)  # fmt: skip
    y = np.frombuffer(done.stdout, "<f4").reshape(-1, leads)
    assert int(done.stderr) == len(y)  # mscnn_resample_length: what the finish gave
    return y


@pytest.mark.parametrize("fs", RATES)
def test_equals_the_python_resampler(fs, tmp_path):
    """float32 sums of 21 products (a phase), each within 2**-24 of its partial sum, which
    stays below max|x| * sum|phase| (about 1.3 max|x|): within 2e-6 * max|x| of the
    Python resampler's float64 sums, whatever the signal."""
    x = np.concatenate([cpsc_record(1), cpsc_record(2)])
    record = resample(x, 500, fs)
    for signal, fs_in, fs_out in ((record, fs, 500), (x, 500, fs)):
        got = c_resample(signal[:, None], fs_in, fs_out, tmp_path)[:, 0]
        want = resample(signal, fs_in, fs_out)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-6 * np.abs(signal).max(), (fs_in, fs_out)


def test_leads_are_resampled_apart(tmp_path):
    x = np.stack([cpsc_record(3)[:3000], -0.5 * cpsc_record(4)[:3000]], axis=1)
    both = c_resample(x, 360, 500, tmp_path)
    for lead in range(2):
        one = c_resample(x[:, lead : lead + 1], 360, 500, tmp_path)
        assert np.array_equal(both[:, lead], one[:, 0])
