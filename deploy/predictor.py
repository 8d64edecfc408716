"""Run a verified bundle with the TVM runtime: input checked against the manifest first."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import LIBRARY, Bundle, load_bundle
from .errors import DeployError
from .files import read_npy, show, write_npy
from .manifest import Manifest, TaskVerdict
from .parity import ParityResult, compare, worst
from .rpeaks import detect_rpeaks


def validate_input(bundle: Bundle, x: object) -> np.ndarray:
    """The signal as the library needs it, or a DeployError saying what was expected."""
    shape = bundle.input_shape
    batch, leads, samples = shape
    if not isinstance(x, np.ndarray):
        raise DeployError(f"input: expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.dtype("<f4"):
        raise DeployError(
            f"input dtype {x.dtype.str} ({x.dtype.name}): expected little-endian "
            "float32, '<f4' (convert with x.astype('<f4'))"
        )
    if x.size == 0:
        raise DeployError(f"input is empty: expected shape {shape}")
    if x.shape != shape:
        if x.ndim == 3 and x.shape[1] != leads:
            detail = (
                f"{x.shape[1]} leads, expected {leads} ({', '.join(bundle.leads)}, in this order)"
            )
        elif x.ndim == 3 and x.shape[2] != samples:
            fs = bundle.manifest.fs
            detail = f"{x.shape[2]} samples, expected {samples} ({samples / fs:g} s at {fs} Hz)"
        elif x.ndim == 3:
            detail = f"batch {x.shape[0]}, expected {batch}"
        else:
            detail = f"{x.ndim} dimensions, expected 3 (batch, leads, samples)"
        raise DeployError(f"input shape {x.shape}: {detail}; this bundle takes {shape}")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DeployError(
            f"input holds NaN or Inf (first at batch {bad[0]}, lead "
            f"{bundle.leads[bad[1]]}, sample {bad[2]}); clean or interpolate "
            "the signal first"
        )
    return np.ascontiguousarray(x)


class Predictor:
    """The bundle's model, loaded once: `predictor(x)` for (batch, leads, samples) float32."""

    def __init__(self, bundle: Bundle | str | Path, threads: int | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        runs, why = self.bundle.runnable_here()
        if not runs:
            raise DeployError(f"bundle {self.bundle.name} cannot run here: {why}")
        import tvm
        from tvm import relax

        if threads is not None:
            set_threads(threads)
        self.device = tvm.cuda(0) if self.bundle.target.is_gpu else tvm.cpu(0)
        try:
            with self.bundle.private_library() as library:
                self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), self.device)
        except DeployError:
            raise
        except Exception as exc:  # a library TVM cannot load is unusable, not a crash
            raise DeployError(
                f"bundle {self.bundle.name}: TVM cannot load {LIBRARY} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        self.main = self._vm["main"]
        self.tvm = tvm

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = validate_input(self.bundle, x)
        out = self.main(self.tvm.runtime.tensor(x, self.device))
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def set_threads(threads: int, remote=None) -> None:
    """TVM's CPU thread pool: `threads` workers sharing this process's CPUs (one way, for
    every caller; `remote` is an RPC session whose device pool is configured instead).

    Mode -2 (kSpecifyOneCorePerThread) over the CPUs this process may use, one worker
    per core. Mode 1 ("big cores first") ran one worker on machines whose cores report
    no frequencies (this project's 2-core EPYC VMs): `runtime.NumThreads` said 1 for 2
    asked, and every "2 thread" TVM figure was single-threaded beside a 2-thread ONNX
    Runtime."""
    import tvm

    name = "runtime.config_threadpool"
    configure = tvm.get_global_func(name) if remote is None else remote.get_function(name)
    if remote is not None:  # the device's CPUs are not known here
        configure(1, threads)
        return
    # TVM pins the calling thread too; give it its CPUs back, or everything this process
    # starts afterwards (ONNX Runtime's and PyTorch's threads) would share one core.
    cpus = os.sched_getaffinity(0)
    configure(-2, threads, [str(c) for c in sorted(cpus)])
    os.sched_setaffinity(0, cpus)


def tvm_threads() -> int:
    """The workers TVM's CPU pool runs parallel loops on, as it reports them."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


@dataclass(frozen=True)
class BundleCheck:
    """A bundle run on its golden inputs: tensor parity (worst case and per case) and,
    for whole models, parity judged on the task (beats or decisions)."""

    verdict: ParityResult
    cases: dict[str, ParityResult]
    task: TaskVerdict | None
    task_gates: bool = True  # False for fp16: its beats are reported (Manifest.task_gates)

    @property
    def passed(self) -> bool:
        task_ok = self.task is None or self.task.passed or not self.task_gates
        return self.verdict.passed and task_ok


def check_bundle(bundle: Bundle | str | Path, how: str = "native (Python)") -> BundleCheck:
    """Run the golden inputs, compare with the golden outputs (one tolerance table), and
    judge the task on the real records among them."""
    predictor = Predictor(bundle)
    b = predictor.bundle
    outputs = {name: predictor(x) for name, (x, _) in b.golden.items()}
    cases = {
        name: compare(outputs[name], expected, b.tolerance_kind)
        for name, (_, expected) in b.golden.items()
    }
    expected = {name: y for name, (_, y) in b.golden.items()}
    return BundleCheck(
        worst(list(cases.values())),
        cases,
        judge_task(b.manifest, outputs, expected, how),
        b.manifest.task_gates,
    )


def check_parity(bundle: Bundle | str | Path) -> tuple[ParityResult, dict[str, ParityResult]]:
    """Tensor parity on the golden inputs: (the worst result, each case's)."""
    done = check_bundle(bundle)
    return done.verdict, done.cases


def judge_task(
    manifest: Manifest, outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], how: str
) -> TaskVerdict | None:
    """Whether the outputs find what PyTorch's find on the real records: the same R-peak
    indices (detector, by the manifest's rule) or the same decisions (classifier: each
    class's logit above 0, i.e. probability above 0.5)."""
    records = [g.name for g in manifest.golden if g.is_record]
    if not records or manifest.model.task == "features":
        return None
    same = 0
    for name in records:
        got, ref = outputs[name], expected[name]
        if manifest.model.task == "qrs_detection" and manifest.detect is not None:
            n = manifest.input.shape[2]
            same += all(
                np.array_equal(
                    detect_rpeaks(g[:, 0], manifest.detect, n),
                    detect_rpeaks(r[:, 0], manifest.detect, n),
                )
                for g, r in zip(got, ref, strict=True)
            )
        else:
            same += bool(np.array_equal(got > 0, ref > 0))
    kind = "beats" if manifest.model.task == "qrs_detection" else "decisions"
    return TaskVerdict(kind, len(records), same, how)


def run_file(bundle: Bundle | str | Path, input_path: Path, output_path: Path) -> np.ndarray:
    """Run one .npy input through a bundle and write the output .npy; returns the output.
    The output path is checked before anything runs, so a bad one loses no work."""
    output_path = Path(output_path)
    if output_path.is_dir():
        raise DeployError(
            f"output path {show(output_path)} is a folder; give a file name such as y.npy"
        )
    if output_path.exists() and not output_path.is_file():  # a device or pipe: not replaced
        raise DeployError(
            f"output path {show(output_path)} is not a regular file; give a file name such as y.npy"
        )
    predictor = Predictor(bundle)
    y = predictor(read_npy(input_path))
    try:
        write_npy(output_path, y)
    except OSError as exc:
        raise DeployError(f"cannot write {show(output_path)}: {exc.strerror}") from None
    return y
