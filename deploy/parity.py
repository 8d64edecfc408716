"""The one parity check and the one tolerance table, used by the tests, the build and the
device check alike. numpy only: it runs on devices."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Error normalised by max |reference|, per device kind for fp32, per precision otherwise
# (a manifest's `tolerance_kind` names the row).
TOLERANCES: dict[str, float] = {
    "cpu": 1e-5,  # fp32 on a CPU: TVM, ONNX Runtime and PyTorch differ in summation order only
    "cuda": 1e-4,  # fp32 on a GPU: fused multiply-add and other reduction orders, looser
    "int8": 0.0,  # integer kernels against the int8 reference: equal bit for bit
    # fp16 storage and products (unit roundoff 2^-11), fp32 accumulation, against fp32
    # PyTorch: the detector's real records reach 7.4e-3; its beats are judged besides
    "fp16": 2e-2,
}


@dataclass(frozen=True)
class ParityResult:
    """How far `got` is from `expected`; NaN or a shape mismatch never passes."""

    max_abs: float
    normalised: float
    tolerance: float
    passed: bool
    detail: str = ""

    def to_json(self) -> dict:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        extra = f"; {self.detail}" if self.detail else ""
        return (
            f"{verdict}: max abs {self.max_abs:.2g}, normalised {self.normalised:.2g} "
            f"(tolerance {self.tolerance:g}{extra})"
        )


def compare(got: np.ndarray, expected: np.ndarray, device: str = "cpu") -> ParityResult:
    """Compare one output with its reference under the tolerance of `device` (a row of
    TOLERANCES: a device kind, or a reduced precision)."""
    if device not in TOLERANCES:
        raise ValueError(f"unknown device kind {device!r}; choose from: {', '.join(TOLERANCES)}")
    tol = TOLERANCES[device]
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return ParityResult(
            math.inf, math.inf, tol, False, f"shape {got.shape} != expected {expected.shape}"
        )
    if not np.isfinite(got).all():
        return ParityResult(math.nan, math.nan, tol, False, "output holds NaN or Inf")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    normalised = max_abs / scale if scale > 0 else max_abs
    return ParityResult(max_abs, normalised, tol, bool(normalised <= tol))


def worst(results: list[ParityResult]) -> ParityResult:
    """The result a bundle is judged by: any failure, else the largest error."""
    if not results:
        raise ValueError("no parity results to judge")
    failed = [r for r in results if not r.passed]
    pool = failed or results
    return max(pool, key=lambda r: r.normalised if math.isfinite(r.normalised) else math.inf)
