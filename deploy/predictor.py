"""Run a verified bundle with the TVM runtime: input checked against the manifest first."""

from __future__ import annotations

import os
import re
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
        check_library(self.bundle, self.main, tvm, self.device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = validate_input(self.bundle, x)
        out = self.main(self.tvm.runtime.tensor(x, self.device))
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def check_library(bundle: Bundle, main, tvm, device) -> None:
    """The loaded library is the model its manifest describes: one call of `main` on
    zeros of the manifest's input (a stream bundle's step with zero states) must be
    accepted and give the manifest's output shape. The hashes prove the files are the
    ones listed, not that the list describes them: another model's library re-hashed
    into the manifest passes them, and would otherwise fail later with a TVM traceback."""
    m = bundle.manifest
    stream = m.stream
    x = tvm.runtime.tensor(np.zeros(m.input.shape, np.float32), device)
    args = [x]
    if stream is not None:
        n_valid = tvm.runtime.tensor(np.array([stream.hop], np.int64), device)
        zeros = [tvm.runtime.tensor(np.zeros(s.shape, s.dtype), device) for s in stream.states]
        args = [x, n_valid, *zeros]
    try:
        out = main(*args)
    except Exception as exc:  # TVM's signature checks raise its own error kinds
        raise library_mismatch(bundle, _tvm_mismatch(str(exc), m, len(args))) from None
    if stream is not None:
        want = (1, stream.channels, stream.hop // stream.reduction)
        parts = len(out) if not hasattr(out, "numpy") else 1
        got = tuple(out[0].shape) if parts == 2 + len(stream.states) else None
        if got != want:
            raise library_mismatch(
                bundle,
                f"its main returns {parts} values ({got or 'not the step'}), the manifest's "
                f"step returns frames {want}, valid and {len(stream.states)} states",
            )
        return
    got = tuple((out if hasattr(out, "numpy") else out[0]).shape)
    if got != m.output.shape:
        raise library_mismatch(
            bundle, f"its output is {got}, the manifest's model gives {m.output.shape}"
        )


def library_mismatch(bundle: Bundle, what: str) -> DeployError:
    """The one refusal of a library that is not its manifest's model."""
    return DeployError(
        f"bundle {bundle.name}: {LIBRARY} is not the model its manifest describes ({what}); "
        "the library was replaced and its hashes rewritten to match: rebuild the bundle "
        "with `python -m compile build`"
    )


def _tvm_mismatch(message: str, m: Manifest, given: int) -> str:
    """What TVM's refusal of the probe call says, in one short clause."""
    arity = re.search(r"expects (\d+) arguments", message)
    if arity:
        takes = int(arity.group(1))
        return f"its main takes {takes} argument{'s' * (takes != 1)}, the manifest's model {given}"
    shape = re.search(r"param=(\w+), annotation=R\.Tensor\(\((.*?)\), dtype=\"(\w+)\"", message)
    want = f"{m.input.shape} {m.input.dtype}"
    if shape:
        name, dims, dtype = shape.groups()
        return f"its {name} is ({dims}) {dtype}, the manifest's input {want}"
    first = next((line for line in message.splitlines() if line.strip()), "")
    return f"it refuses the manifest's input {want}: {show(first.strip())[:160]}"


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
