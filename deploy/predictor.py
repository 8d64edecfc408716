"""Run a verified bundle with the TVM runtime: input checked against the manifest first."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .bundle import LIBRARY, Bundle, load_bundle
from .errors import DeployError
from .parity import ParityResult, compare, worst


def validate_input(bundle: Bundle, x: object) -> np.ndarray:
    """The signal as the library needs it, or a DeployError saying what was expected."""
    shape = bundle.input_shape
    batch, leads, samples = shape
    if not isinstance(x, np.ndarray):
        raise DeployError(f"input: expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.dtype("<f4"):
        raise DeployError(f"input dtype {x.dtype.str} ({x.dtype.name}): expected little-endian "
                          "float32, '<f4' (convert with x.astype('<f4'))")  # fmt: skip
    if x.size == 0:
        raise DeployError(f"input is empty: expected shape {shape}")
    if x.shape != shape:
        if x.ndim == 3 and x.shape[1] != leads:
            detail = (f"{x.shape[1]} leads, expected {leads} "
                      f"({', '.join(bundle.leads)}, in this order)")  # fmt: skip
        elif x.ndim == 3 and x.shape[2] != samples:
            fs = bundle.manifest["fs"]
            detail = f"{x.shape[2]} samples, expected {samples} ({samples / fs:g} s at {fs} Hz)"
        elif x.ndim == 3:
            detail = f"batch {x.shape[0]}, expected {batch}"
        else:
            detail = f"{x.ndim} dimensions, expected 3 (batch, leads, samples)"
        raise DeployError(f"input shape {x.shape}: {detail}; this bundle takes {shape}")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DeployError(f"input holds NaN or Inf (first at batch {bad[0]}, lead "
                          f"{bundle.leads[bad[1]]}, sample {bad[2]}); clean or interpolate "
                          "the signal first")  # fmt: skip
    return np.ascontiguousarray(x)


class Predictor:
    """The bundle's model, loaded once: `predictor(x)` for (batch, leads, samples) float32."""

    def __init__(self, bundle: Bundle | str | Path, threads: int | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        runs, why = self.bundle.runnable_here()
        if not runs:
            raise DeployError(f"bundle {self.bundle.name} cannot run here: {why}")
        if threads is not None:  # read by TVM's thread pool when it starts
            os.environ["TVM_NUM_THREADS"] = str(threads)
        import tvm
        from tvm import relax

        self.device = tvm.cuda(0) if self.bundle.device == "cuda" else tvm.cpu(0)
        try:
            library = tvm.runtime.load_module(str(self.bundle.path / LIBRARY))
            self._vm = relax.VirtualMachine(library, self.device)
        except Exception as exc:  # a library TVM cannot load is unusable, not a crash
            raise DeployError(f"bundle {self.bundle.name}: TVM cannot load {LIBRARY} "
                              f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        self._main = self._vm["main"]
        self._tvm = tvm

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = validate_input(self.bundle, x)
        out = self._main(self._tvm.runtime.tensor(x, self.device))
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def check_parity(bundle: Bundle | str | Path) -> tuple[ParityResult, dict[str, ParityResult]]:
    """Run the golden inputs and compare with the golden outputs (one tolerance table)."""
    predictor = Predictor(bundle)
    results = {
        name: compare(predictor(x), expected, predictor.bundle.device)
        for name, (x, expected) in predictor.bundle.golden.items()
    }
    return worst(list(results.values())), results
