"""A streamed record at another rate than the bundle's: its samples resampled on their way
in (deploy/resample.py's streaming Resampler, which keeps a few dozen inputs, so memory
stays bounded), its beats taken back to its own clock on their way out.

`InputRate(None or the bundle's rate, ...)` passes samples and beats through unchanged, so
the stream code has one path for both."""

from __future__ import annotations

import numpy as np

from .resample import Resampler, rate_pair


class InputRate:
    def __init__(self, fs: int | None, fs_bundle: int) -> None:
        """`fs`: the record's rate (None: the bundle's); a ratio the filter cannot take
        is a DeployError here, before anything is streamed."""
        self.fs = fs if fs is not None else fs_bundle
        self.pair = rate_pair(self.fs, fs_bundle) if self.fs != fs_bundle else None
        self._resampler = Resampler(self.fs, fs_bundle) if self.pair else None
        self._pushed = False

    @property
    def resampled(self) -> bool:
        return self._resampler is not None

    @property
    def held(self) -> int:
        """Record samples (per lead) the resampler keeps: bounded, whatever the length."""
        return self._resampler.held if self._resampler else 0

    def push(self, x: np.ndarray) -> np.ndarray:
        """(leads, n) samples of the record; (leads, m) at the bundle's rate, float32:
        those now final (x itself when not resampled)."""
        if self._resampler is None:
            return x
        self._pushed = True
        return self._resampler.push(x)

    def flush(self, leads: int) -> np.ndarray:
        """The end of the record: the last samples at the bundle's rate (leads, m)."""
        if self._resampler is None or not self._pushed:
            return np.zeros((leads, 0), np.float32)
        return self._resampler.flush()

    def restart(self) -> None:
        """A new segment (after a gap): the resampler forgets the samples before it."""
        if self._resampler is not None:
            self._resampler = Resampler(self.fs, self.pair.fs_out)
            self._pushed = False

    def model_samples(self, n: int) -> int:
        """`n` samples of the record as samples at the bundle's rate (nearest, at least 1):
        a gap's length in the model's clock."""
        if self.pair is None:
            return n
        return max(1, round(n * self.pair.fs_out / self.pair.fs_in))

    def to_record(self, beats: np.ndarray, received: int) -> np.ndarray:
        """Beats at the bundle's rate as samples of the record (nearest, at most its last
        sample of the `received` so far), as deploy detect --fs reports them."""
        if self.pair is None:
            return np.asarray(beats, np.int64)
        return np.minimum(self.pair.to_input_clock(beats), received - 1)
