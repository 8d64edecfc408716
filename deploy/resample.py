"""A record at any sampling rate to the bundle's: polyphase rational resampling in numpy.

The rate ratio is reduced to up/down (L/M: 360 -> 500 Hz is 25/18). One FIR low-pass is
designed per rate pair: a windowed sinc, cutoff at the slower rate's Nyquist (1/max(L, M)
of the upsampled band), 2 * 10 * max(L, M) + 1 taps, Kaiser window beta 5 (about -55 dB
from 1.2 times the cutoff; measured in docs/recordings.md), scaled to a DC gain of L. It is
applied polyphase: output k is the dot product of one of its L phases (about
20 * max(L, M) / L taps) with the latest inputs, so the zero-stuffed signal is never
formed. The filter is centred (zero phase: output k stands at input time k * M / L) and
the record is taken as zero outside its ends, as scipy.signal.resample_poly's defaults do.

`Resampler` is the streaming form (`push(chunk)` then `flush()`); `resample` is one push
of the whole record and a flush, so any chunking gives the same samples, bit for bit:
each output is one row's dot product, computed alike whatever else is in the block.
deploy needs no scipy on a device; the tests compare with scipy.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import DeployError

HALF_LENGTH = 10  # taps each side of the centre, per max(L, M)
KAISER_BETA = 5.0
MAX_FACTOR = 1000  # L and M above this make filters of 20000+ taps: refuse them
_BLOCK = 1 << 15  # outputs computed at once (bounds the gathered (leads, rows, taps))


@dataclass(frozen=True)
class RatePair:
    """Input and output rates (Hz, whole numbers) as the reduced ratio up / down."""

    fs_in: int
    fs_out: int

    @property
    def up(self) -> int:
        return self.fs_out // math.gcd(self.fs_in, self.fs_out)

    @property
    def down(self) -> int:
        return self.fs_in // math.gcd(self.fs_in, self.fs_out)

    def output_length(self, n: int) -> int:
        """ceil(n * L / M): the samples that n inputs give."""
        return -(-n * self.up // self.down)

    def to_input_clock(self, samples: np.ndarray) -> np.ndarray:
        """Output sample indices as the nearest input sample indices (round half up)."""
        s = np.asarray(samples, dtype=np.int64)
        return (2 * s * self.down + self.up) // (2 * self.up)


def whole_rate(fs: object, what: str) -> int:
    """A rate in Hz as an int; a DeployError for a fractional or non-positive one."""
    if isinstance(fs, numbers.Real) and not isinstance(fs, bool) and fs > 0 and fs == int(fs):
        return int(fs)
    raise DeployError(f"{what} {fs!r} Hz: expected a whole, positive number of Hz")


def rate_pair(fs_in: object, fs_out: object) -> RatePair:
    """The checked pair; a ratio whose filter would be huge (e.g. 499 -> 500) is refused."""
    pair = RatePair(whole_rate(fs_in, "input rate"), whole_rate(fs_out, "output rate"))
    if max(pair.up, pair.down) > MAX_FACTOR:
        raise DeployError(
            f"{pair.fs_in} Hz -> {pair.fs_out} Hz is the ratio {pair.up}/{pair.down}; "
            f"up and down must be <= {MAX_FACTOR} (a {20 * max(pair.up, pair.down) + 1}-tap "
            "filter): resample to a rate with a simpler ratio first"
        )
    return pair


def design_filter(pair: RatePair) -> np.ndarray:
    """The low-pass FIR (module docstring) at the upsampled rate, float64, odd length."""
    rate = max(pair.up, pair.down)
    half = HALF_LENGTH * rate
    t = np.arange(-half, half + 1, dtype=np.float64)
    h = np.sinc(t / rate) * np.kaiser(2 * half + 1, KAISER_BETA)
    return h * (pair.up / h.sum())


class Resampler:
    """Streaming polyphase resampling of (leads, samples) or (samples,) float chunks.

    Output k is final once input q_k = (k * M + D) // L has arrived (D: the filter's
    centre), so each push returns what it can and keeps the last taps-per-phase inputs;
    `flush` treats the record as ended (zeros after it) and returns the rest, up to
    ceil(n * L / M) outputs in all."""

    def __init__(self, fs_in: object, fs_out: object) -> None:
        self.pair = rate_pair(fs_in, fs_out)
        h = design_filter(self.pair)
        up = self.pair.up
        self._centre = len(h) // 2
        self._taps = -(-len(h) // up)  # taps per phase
        # phase p holds h[p], h[p + L], ...: output k uses phase (k M + D) mod L
        padded = np.zeros(self._taps * up)
        padded[: len(h)] = h
        self._phases = padded.reshape(self._taps, up).T.copy()  # (L, taps)
        self._buf: np.ndarray | None = None  # (leads, inputs kept), zeros before sample 0
        self._start = -(self._taps - 1)  # input index of _buf[:, 0]
        self._received = 0
        self._next = 0  # next output index
        self._shape: tuple[int, ...] | None = None

    @property
    def held(self) -> int:
        """Input samples (per lead) kept for the outputs still to come: a few dozen after
        each push, whatever the stream's length."""
        return 0 if self._buf is None else self._buf.shape[1]

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """New input samples; the outputs now final (float32, same leading shape)."""
        x = self._check(chunk)
        self._buf = np.concatenate([self._buf, x], axis=1)
        self._received += x.shape[1]
        # outputs with q_k <= received - 1
        end = (self._received * self.pair.up - 1 - self._centre) // self.pair.down + 1
        return self._emit(max(end, self._next))

    def flush(self) -> np.ndarray:
        """The end of the record: the remaining outputs (zeros taken after the end)."""
        if self._buf is None:
            raise DeployError("resampler: flush before any push; push the record's samples")
        end = self.pair.output_length(self._received)
        last = ((end - 1) * self.pair.down + self._centre) // self.pair.up if end else 0
        need = last - (self._start + self._buf.shape[1]) + 1
        if need > 0:
            self._buf = np.concatenate([self._buf, np.zeros((len(self._buf), need))], axis=1)
        return self._emit(max(end, self._next))

    def _emit(self, end: int) -> np.ndarray:
        pieces = []
        for k0 in range(self._next, end, _BLOCK):
            k = np.arange(k0, min(end, k0 + _BLOCK), dtype=np.int64)
            p = k * self.pair.down + self._centre
            rows = (p // self.pair.up - self._start)[:, None] - np.arange(self._taps)
            # (leads, rows, taps) * (rows, taps), summed per row
            pieces.append((self._buf[:, rows] * self._phases[p % self.pair.up]).sum(axis=-1))
        self._next = end
        # keep the inputs the next output reaches back to
        first = (self._next * self.pair.down + self._centre) // self.pair.up - self._taps + 1
        drop = max(0, min(first - self._start, self._buf.shape[1]))
        self._buf, self._start = self._buf[:, drop:], self._start + drop
        y = np.concatenate(pieces, axis=1) if pieces else np.zeros((len(self._buf), 0))
        return y.astype(np.float32).reshape(*self._shape[:-1], -1)

    def _check(self, chunk: object) -> np.ndarray:
        x = np.asarray(chunk)
        if x.ndim not in (1, 2) or x.dtype.kind not in "fiu":
            raise DeployError(
                f"resampler: chunk of shape {x.shape} dtype {x.dtype}; expected numbers "
                "of shape (samples,) or (leads, samples)"
            )
        if self._shape is None:
            self._shape = x.shape
            leads = 1 if x.ndim == 1 else x.shape[0]
            self._buf = np.zeros((leads, self._taps - 1))
        elif x.shape[:-1] != self._shape[:-1]:
            raise DeployError(
                f"resampler: chunk of shape {x.shape} after chunks of {self._shape}; "
                "keep the number of leads"
            )
        return x.reshape(len(self._buf), -1).astype(np.float64)


def resample(x: np.ndarray, fs_in: object, fs_out: object) -> np.ndarray:
    """A whole record (samples,) or (leads, samples) from fs_in to fs_out Hz, float32."""
    r = Resampler(fs_in, fs_out)
    return np.concatenate([r.push(x), r.flush()], axis=-1)
