"""Golden inputs: the fixed signals every bundle is checked on, at build time and on the
device. Seeded, so two builds of the same model write the same bytes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deploy.files import write_npy
from deploy.manifest import GoldenCase

log = logging.getLogger(__name__)

# Relative amplitude of the QRS complex per lead, roughly a cardiac vector along the
# frontal axis at +60 degrees projected on each lead (a synthetic signal, not a recording).
_LEAD_GAIN = {
    "I": 0.5,
    "II": 1.0,
    "III": 0.5,
    "aVR": -0.75,
    "aVL": 0.0,
    "aVF": 0.75,
    "V1": -0.6,
    "V2": -0.3,
    "V3": 0.4,
    "V4": 1.1,
    "V5": 1.0,
    "V6": 0.7,
}
# P, Q, R, S, T waves: (centre in seconds after the beat, width in seconds, amplitude mV)
_WAVES = (
    (-0.20, 0.025, 0.12),
    (-0.03, 0.010, -0.10),
    (0.0, 0.012, 1.2),
    (0.03, 0.010, -0.25),
    (0.25, 0.040, 0.30),
)


def synthetic_ecg(
    leads: list[str] | tuple[str, ...], samples: int, fs: int, batch: int = 1, seed: int = 0
) -> np.ndarray:
    """An ECG-like (batch, leads, samples) float32 signal in mV: sums of Gaussian P-QRS-T
    waves at ~72 bpm with beat-to-beat jitter, baseline wander and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / fs
    out = np.empty((batch, len(leads), samples), dtype=np.float64)
    for b in range(batch):
        beats = np.cumsum(rng.normal(60 / 72, 0.03, size=int(samples / fs / 0.6) + 3)) - 0.5
        beat = np.zeros(samples)
        for centre in beats:
            for offset, width, amp in _WAVES:
                beat += amp * np.exp(-0.5 * ((t - centre - offset) / width) ** 2)
        wander = 0.1 * np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * t + rng.uniform(0, 2 * np.pi))
        for i, lead in enumerate(leads):
            gain = _LEAD_GAIN.get(lead, 1.0)
            out[b, i] = gain * beat + wander + rng.normal(0, 0.02, samples)
    return out.astype(np.float32)


def golden_inputs(
    leads: list[str] | tuple[str, ...], samples: int, fs: int, batch: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """The named golden inputs of a bundle: white noise and the synthetic ECG."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((batch, len(leads), samples), dtype=np.float32)
    return {"noise": noise, "ecg": synthetic_ecg(leads, samples, fs, batch, seed)}


# Real records as golden cases of whole models: the detector is checked on every CPSC2019
# record (its beats must be PyTorch's), a classifier on a few CinC 2021 records.
CLASSIFIER_RECORDS = 10
RECORD_PREFIX = "record-"


def real_inputs(
    task: str, leads: tuple[str, ...], samples: int, batch: int
) -> tuple[dict[str, np.ndarray], str]:
    """Golden inputs from the shared real ECG for a whole model's task, cropped to the
    window, `batch` records per case; ({} and why) when there are none to use."""
    import mscnn
    from mscnn import data

    if task == "qrs_detection" and len(leads) == 1:
        try:
            records = data.cpsc2019_records()
        except mscnn.MscnnError as exc:
            return {}, str(exc)
        signals, names = records.signals[:, None, :], records.names
    elif task == "classification" and set(leads) <= set(mscnn.LEADS_12):
        try:
            records = data.cinc2021_records()
        except mscnn.MscnnError as exc:
            return {}, str(exc)
        order = [records.leads.index(lead) for lead in leads]
        signals = records.signals[:CLASSIFIER_RECORDS][:, order]
        names = records.names[:CLASSIFIER_RECORDS]
    else:
        return {}, f"no real records for a {task} model on leads {', '.join(leads)}"
    if signals.shape[-1] < samples:
        return {}, f"the records hold {signals.shape[-1]} samples, the window {samples}"
    cases = {}
    for k in range(0, len(names) - batch + 1, batch):
        x = np.ascontiguousarray(signals[k : k + batch, :, :samples], dtype=np.float32)
        cases[RECORD_PREFIX + names[k]] = x
    return cases, f"{len(cases)} real records"


def window_cases(
    task: str,
    leads: tuple[str, ...],
    samples: int,
    fs: int,
    batch: int = 1,
    seed: int = 0,
    records: int | None = None,
) -> dict[str, np.ndarray]:
    """Every window a build checks its model on: the seeded noise and synthetic ECG, and
    for a whole model (task other than "features") the real records of its task (the
    first `records` of them, or all). One selection for window bundles of every precision
    and for the Cortex-M builds."""
    inputs = golden_inputs(leads, samples, fs, batch, seed)
    if task == "features":
        return inputs
    real, why = real_inputs(task, tuple(leads), samples, batch)
    if not real:
        log.info("no real records for the golden cases (%s)", why)
    inputs.update(dict(list(real.items())[:records]))
    return inputs


def write_cases(folder: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[GoldenCase]:
    """Write each named (input, expected output) pair as plain .npy under folder/golden/,
    the layout deploy/ and the native runner read; returns the manifest's entries."""
    (folder / "golden").mkdir()
    written = []
    for name, (x, y) in cases.items():
        case = GoldenCase(name, f"golden/{name}.input.npy", f"golden/{name}.output.npy")
        write_npy(folder / case.input, x)
        write_npy(folder / case.output, y)
        written.append(case)
    return written
