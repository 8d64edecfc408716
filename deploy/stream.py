"""Streaming with a stream bundle: push chunks of any size, get frames as they complete.

A stream bundle's library holds one function, the model's step (mscnn.streaming):

    main(ecg (1, leads, hop), n_valid (1,) int64, *states) -> (frames, valid, *states)

The caller owns the state: it starts at zero, goes in with every hop and comes back
updated. While streaming n_valid == hop; to end a record its last partial hop goes in with
n_valid = samples in it (0 for none), then empty hops until a step returns fewer valid
frames than a hop holds (at most `flush_steps` hops). `valid` = [start, stop) says which
of the step's frames are the next frames of the offline model. Streaming a record then
flushing gives exactly the frames the window model gives on the whole record.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import DeployError
from .manifest import StreamInfo

Step = Callable[[np.ndarray, int, list], tuple[np.ndarray, tuple[int, int], list]]


class Stream:
    """`push(x)` (leads, n) float32 -> frames completed so far (channels, k); `flush()` ->
    the rest, then the stream is reset; `reset()` starts a new record; `gap(n)` marks n
    samples the sensor did not give. A refused chunk (NaN/Inf, wrong leads or dtype)
    leaves the stream as it was.

    `samples` is the record's clock (samples pushed and gap samples), `start` the sample
    where the current segment began (0, or the end of the last gap): frame k of the
    segment covers samples start + k * reduction onwards."""

    def __init__(self, info: StreamInfo, leads: int, step: Step, initial: Callable[[], list]):
        self.info, self.leads = info, leads
        self._step, self._initial = step, initial
        self.reset()

    def reset(self) -> None:
        self._states = self._initial()
        self._pending = np.zeros((self.leads, 0), np.float32)
        self.samples = self.start = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        pending = np.concatenate([self._pending, x], axis=1)
        hop, frames, states = self.info.hop, [], self._states
        whole = pending.shape[1] // hop * hop
        for at in range(0, whole, hop):
            out, (start, stop), states = self._step(pending[None, :, at : at + hop], hop, states)
            frames.append(out[0, :, start:stop])
        self._states, self._pending = states, pending[:, whole:]
        self.samples += x.shape[1]
        return self._cat(frames)

    def flush(self) -> np.ndarray:
        """The frames that the end of the record completes; then a fresh stream."""
        frames = self._end_segment()
        self.reset()
        return frames

    def gap(self, n: int) -> np.ndarray:
        """A gap of `n` samples (the sensor lost contact): the frames that end the segment
        before it, as `flush` gives them, then the model's state restarts and the clock
        advances by `n`, so the next segment keeps the record's sample clock (`start`).
        Beats of each segment are the offline rule's on that segment alone."""
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise DeployError(f"gap of {n!r} samples: give a whole number of samples >= 1")
        end = self.samples + int(n)
        frames = self._end_segment()
        self.reset()
        self.samples = self.start = end
        return frames

    def _end_segment(self) -> np.ndarray:
        """The current segment's last frames: its partial hop, then empty hops."""
        if self.samples == self.start:
            return self._cat([])
        hop, m = self.info.hop, self.info.hop // self.info.reduction
        x = np.zeros((1, self.leads, hop), np.float32)
        x[0, :, : self._pending.shape[1]] = self._pending
        n_valid, states, frames = self._pending.shape[1], self._states, []
        for _ in range(self.info.flush_steps):
            out, (start, stop), states = self._step(x, n_valid, states)
            frames.append(out[0, :, start:stop])
            if stop < m:
                return self._cat(frames)
            x, n_valid = np.zeros_like(x), 0
        raise DeployError(
            f"the stream did not end within {self.info.flush_steps} steps; "
            "the bundle's step or manifest is inconsistent"
        )

    def run(self, record: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """A whole record (leads, samples), pushed in chunks, then flushed."""
        chunk = chunk or self.info.hop
        parts = [self.push(record[:, at : at + chunk]) for at in range(0, record.shape[1], chunk)]
        return self._cat([*parts, self.flush()])

    def _check(self, x: object) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            kind = getattr(x, "dtype", type(x).__name__)
            raise DeployError(
                f"chunk: expected a float32 numpy array, got {kind}; convert with x.astype('<f4')"
            )
        if x.ndim != 2 or x.shape[0] != self.leads:
            raise DeployError(f"chunk of shape {x.shape}: expected ({self.leads} leads, n)")
        if not np.isfinite(x).all():
            lead, sample = np.argwhere(~np.isfinite(x))[0]
            raise DeployError(
                f"chunk holds NaN or Inf (lead {lead}, sample {sample} of the "
                "chunk); it was refused and the stream is as before: resend a "
                "clean chunk, mark a sensor gap with gap(n), or reset()"
            )
        return x

    def _cat(self, frames: list[np.ndarray]) -> np.ndarray:
        channels = self.info.channels
        return np.concatenate(frames, axis=1) if frames else np.zeros((channels, 0), np.float32)


def open_stream(bundle: Bundle | str | Path, threads: int | None = None) -> Stream:
    """A stream on a verified stream bundle's compiled step (TVM runtime)."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    info = bundle.manifest.stream
    if info is None:
        raise DeployError(
            f"bundle {bundle.name} is a window bundle; streaming needs a stream "
            "bundle (python -m compile build --mode stream)"
        )
    from .predictor import Predictor

    predictor = Predictor(bundle, threads)
    tvm, device, main = predictor.tvm, predictor.device, predictor.main

    def step(x: np.ndarray, n_valid: int, states: list):
        args = [
            tvm.runtime.tensor(np.ascontiguousarray(x), device),
            tvm.runtime.tensor(np.array([n_valid], np.int64), device),
            *states,
        ]
        frames, valid, *new = main(*args)
        start, stop = (int(v) for v in valid.numpy())
        return frames.numpy(), (start, stop), list(new)

    def initial() -> list:
        return [tvm.runtime.tensor(np.zeros(s.shape, s.dtype), device) for s in info.states]

    return Stream(info, len(bundle.leads), step, initial)


def check_stream(bundle: Bundle | str | Path, how: str = "native (Python)"):
    """Stream the golden record hop by hop through the bundle and compare with the
    offline model's frames (tensors; beats for a detector, by the manifest's rule)."""
    from .manifest import TaskVerdict
    from .parity import compare, worst
    from .predictor import BundleCheck
    from .rpeaks import detect_rpeaks

    stream = open_stream(bundle)
    b = load_bundle(bundle) if not isinstance(bundle, Bundle) else bundle
    cases, task = {}, None
    for name, (record, expected) in b.golden.items():
        got = stream.run(record)
        cases[name] = compare(got, expected, b.tolerance_kind)
        rule = b.manifest.detect
        if rule is not None and got.shape == expected.shape:
            n = record.shape[-1]
            same = np.array_equal(
                detect_rpeaks(got[0], rule, n), detect_rpeaks(expected[0], rule, n)
            )
            task = TaskVerdict("beats", 1, int(same), how)
    return BundleCheck(worst(list(cases.values())), cases, task)
