"""The runtimes a user would pick instead of ours, as benchmark peers in their own venvs.

A peer's packages clash with our pins (TensorFlow's; ExecuTorch's torchao and
coremltools), so each runs as a child process under its own virtual environment's
interpreter (made by `make bench` on first use, pinned in the Makefile), speaking the
line protocol of compile/bench/peer_serve.py: the host writes the model and its inputs
into SPEC.npz, the child converts the model its own way and answers "time n calls" and
"run these records" requests. So a peer is timed in the same alternating rounds as our
runtimes (compile.bench.window.time_timers), on the same input and threads, and its
outputs are judged by the same code as ours.

A peer that cannot run a model (its venv is missing, or its converter or runtime
refuses an operator) reports one line, its own error, in place of a timing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CompileError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# a line of a Python traceback's end or a fatal error from C: what a dead child's log says
ERROR_LINE = re.compile(
    r"^([\w.]+(Error|Exception|Interrupt)\b|Fatal|Segmentation fault|terminate)"
)
START_SECONDS = 900  # conversion and calibration in the child (minutes on 2 busy cores)
REQUEST_SECONDS = 600
# A child holding more than this share of the machine's memory is stopped, before the
# kernel's out-of-memory killer picks a process (ExecuTorch's export of the seq_lab_crnn
# LSTM grew past 21 GB of 24 and was killed there); checked every POLL_SECONDS.
MEMORY_SHARE = 0.75
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Peer:
    """One peer: where its interpreter lives, its script, the models it offers."""

    name: str
    venv: str  # relative to the repository root
    script: str  # in compile/bench/
    models: tuple[str, ...]
    describe: str  # what the rows are, for tables and docs

    @property
    def python(self) -> Path:
        return ROOT / self.venv / "bin" / "python"


PEERS = {
    "litert": Peer(
        "litert",
        ".venv-tflm",
        "peer_litert.py",
        ("litert-fp32", "litert-int8", "litert-int8-mixed"),
        "LiteRT (tf.lite.Interpreter 2.21, XNNPACK delegate), the detector rebuilt in Keras; "
        "int8 with Mish's intermediates bounded; int8-mixed keeps Keras's EXP and LOG in float",
    ),
    "executorch": Peer(
        "executorch",
        ".venv-executorch",
        "peer_executorch.py",
        ("executorch-fp32", "executorch-int8"),
        "ExecuTorch 1.5.1 (torch.export, XNNPACK backend, PT2E int8 with batch norms as "
        "depthwise convs), its Python runtime",
    ),
}


class PeerProcess:
    """A running peer: its models' status, timers and record runs."""

    def __init__(self, peer: Peer, spec: Path, workdir: Path, threads: int):
        self.peer, self.workdir = peer, workdir
        self.log_path = workdir / f"{peer.name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115  (the child's stderr, till close)
        self.proc = subprocess.Popen(
            [str(peer.python), str(HERE / peer.script), str(spec), str(workdir), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )  # fmt: skip
        self.status: dict[str, dict] = {}

    def wait_ready(self) -> dict[str, dict]:
        """The child's models once it has built them (its first line)."""
        self.status = self._read(START_SECONDS)["models"]
        return self.status

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        limit = memory_limit()
        while True:
            left = deadline - time.monotonic()
            wait = max(0.0, min(left, POLL_SECONDS))
            ready, _, _ = select.select([self.proc.stdout], [], [], wait)
            held = resident_bytes(self.proc.pid)
            if not ready and limit is not None and held > limit:
                self.proc.kill()
                self.close()
                raise CompileError(
                    f"peer {self.peer.name} held {held / 2**30:.1f} GiB, more than "
                    f"{limit / 2**30:.1f} GiB ({MEMORY_SHARE:.0%} of this machine's memory); "
                    f"stopped (its log: {self.last_words()})"
                )
            if ready or left <= POLL_SECONDS:
                break
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise CompileError(self._stopped(timeout, closed=bool(ready)))
        return json.loads(line)

    def last_words(self) -> str:
        """The last error line of the child's log, else its last line (a converter's
        warnings end many logs), at most 300 characters."""
        lines = [line.strip() for line in self.log_path.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if ERROR_LINE.match(line)]
        return (errors or lines or ["no output"])[-1][:300]

    def _stopped(self, timeout: float, closed: bool) -> str:
        """Why the child gave no answer, in one line: none in time (it is stopped), or
        how it ended (its output `closed`) and the last error its log holds, else its
        last line (a converter's warnings end many logs)."""
        if closed:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        else:
            self.proc.kill()  # still converting after `timeout`: no more waiting
        self.close()
        code = self.proc.returncode if closed else None
        said = self.last_words()
        name = self.peer.name
        if code is None:
            return f"peer {name} gave no answer in {timeout:.0f} s; stopped (its log: {said})"
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if code == -signal.SIGKILL:  # what the kernel's out-of-memory killer sends
            how += ", as the out-of-memory killer stops a process: see dmesg"
        return f"peer {name} stopped ({how}): {said}"

    def request(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self._read(REQUEST_SECONDS)
        if "error" in answer:
            raise CompileError(f"peer {self.peer.name}: {answer['error']}")
        return answer

    def timer(self, model: str):
        """n -> n call times in ms, timed in the child on the spec's `x`."""
        return lambda n: self.request(op="time", model=model, runs=n)["ms"]

    def run(self, model: str, x: np.ndarray) -> np.ndarray:
        """The model's outputs on the records of `x`, one call each."""
        source, sink = self.workdir / f"{model}.in.npy", self.workdir / f"{model}.out.npy"
        np.save(source, np.ascontiguousarray(x, dtype=np.float32))
        self.request(op="run", model=model, input=str(source), output=str(sink))
        return np.load(sink)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def memory_limit() -> int | None:
    """MEMORY_SHARE of this machine's memory in bytes (None where /proc does not say)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    return int(MEMORY_SHARE * int(found.group(1)) * 1024) if found else None


def resident_bytes(pid: int) -> int:
    """The resident memory of process `pid` and every process under it, in bytes (0 for
    one that has ended)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{current}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            total += int(found.group(1)) * 1024 if found else 0
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def refused(peer: Peer, why: str) -> dict[str, dict]:
    return {m: {"ok": False, "error": why} for m in peer.models}


def start_peer(peer: Peer, spec: Path, workdir: Path, threads: int):
    """(PeerProcess or None, status per model): None with every model refused when the
    peer's venv is missing. The child converts meanwhile: `ready` waits for it."""
    if not peer.python.is_file():
        why = f"no {peer.venv}: `make bench` makes it (see the Makefile's peer venvs)"
        return None, refused(peer, why)
    log.info("peer %s: converting in %s (minutes)", peer.name, peer.venv)
    return PeerProcess(peer, spec, workdir, threads), {}


def ready(process: PeerProcess):
    """(process, its models' status), or (None, every model refused) when the child died
    before it announced them."""
    try:
        return process, process.wait_ready()
    except CompileError as exc:
        return None, refused(process.peer, str(exc))


# --------------------------------------------------------------------------------------
# What each peer is given


def detector_spec(
    model, x, calibration, held_out, expected, workdir: Path, models=None
) -> dict[str, Path]:
    """SPEC.npz per peer for the QRS detector: LiteRT gets the network as data (rebuilt in
    Keras), ExecuTorch the model exported with torch.export (a .pt2 its torch loads).
    `models`: the peer models to build (all by default)."""
    from .tflm import network_spec

    common = {"x": x, "calibration": calibration, "held_out": held_out, "expected": expected}
    if models is not None:
        common["models"] = np.array(list(models), dtype=str)
    spec, arrays = network_spec(model, x.shape[2])
    litert = workdir / "litert_spec.npz"
    np.savez(litert, spec=json.dumps(spec), **common, **arrays)
    executorch = workdir / "executorch_spec.npz"
    np.savez(executorch, program=str(export_program(model, x, workdir)), **common)
    return {"litert": litert, "executorch": executorch}


def export_program(model, x: np.ndarray, workdir: Path) -> Path:
    """`model` exported with torch.export at the input `x`, saved as a .pt2."""
    import torch

    # a copy has canonical strides: numpy's size-1 lead axis of `x` may have stride 0,
    # which ExecuTorch refuses ("0 in strides is not supported for ExecuTorch")
    example = torch.from_numpy(x.copy())
    with torch.no_grad():
        exported = torch.export.export(model.eval(), (example,))
    program = workdir / "model.pt2"
    torch.export.save(exported, program)
    return program


def window_spec(model, x: np.ndarray, workdir: Path, names) -> tuple[dict[str, Path], dict]:
    """SPEC.npz per peer for the fp32 window of any model at the input `x`: ExecuTorch
    takes every model; LiteRT those the Keras rebuild maps (the QRS detector), the others
    refused with the rebuild's reason. ({peer: spec}, {model: refusal})."""
    import torch

    from .tflm import network_spec

    specs = {}
    if "executorch" in names:
        specs["executorch"] = workdir / "executorch_spec.npz"
        program = export_program(model, x, workdir)
        np.savez(specs["executorch"], program=str(program), x=x, models=["executorch-fp32"])
    if "litert" in names:
        try:
            if x.shape[0] != 1:
                raise CompileError(f"the Keras rebuild takes batch 1, not {x.shape[0]}")
            spec, arrays = network_spec(model, x.shape[2])
        except CompileError as exc:
            return specs, {"litert-fp32": {"ok": False, "error": f"not mapped: {exc}"}}
        held = detector_inputs(x.shape[2])[1][:2]  # the Keras copy is checked on these
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(held)).numpy()
        specs["litert"] = workdir / "litert_spec.npz"
        np.savez(specs["litert"], spec=json.dumps(spec), x=x, held_out=held, expected=expected,
                 calibration=held[:1], models=["litert-fp32"], **arrays)  # fmt: skip
    return specs, {}


def start_detector_peers(
    model, x: np.ndarray, workdir: Path, threads: int, names, samples=None, models=None
):
    """The peers named, started on the QRS detector: calibrated on our calibration records,
    checked and judged on the held-out ones (cut to `samples` where given, for tests);
    `x` is the timing input; `models` limits what they build (all by default).
    ({name: PeerProcess}, {model: status}); ({}, {}) for none."""
    import torch

    if not names:
        return {}, {}
    calibration, held = detector_inputs(samples)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(held)).numpy()
    specs = detector_spec(model, x, calibration, held, expected, workdir, models)
    return open_peers(specs, workdir, threads, names)


def detector_inputs(samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) CPSC2019 records as the detector takes them, (records, 1,
    samples), the first `samples` of each where given."""
    from ..int8.quantize import CALIBRATION_RECORDS, HELD_OUT_RECORDS, real_ecg

    cut = slice(None, samples)
    return tuple(
        np.ascontiguousarray(real_ecg(("ECG",), records)[..., cut])
        for records in (CALIBRATION_RECORDS, HELD_OUT_RECORDS)
    )


def open_peers(specs: dict[str, Path], workdir: Path, threads: int, names=None):
    """Start the peers named (all by default): ({name: PeerProcess}, {model: status})."""
    started, status = {}, {}
    for name in PEERS if names is None else names:  # the children convert side by side
        process, models = start_peer(PEERS[name], specs[name], workdir, threads)
        if process is not None:
            started[name] = process
        status.update(models)
    processes = {}
    for name, process in started.items():
        process, models = ready(process)
        if process is not None:
            processes[name] = process
        status.update(models)
    return processes, status


def model_calls(processes: dict) -> tuple[dict, dict]:
    """({model: timer n -> ms}, {model: x -> outputs}) of every model that runs."""
    timers, runs = {}, {}
    for process in processes.values():
        for model, state in process.status.items():
            if state["ok"]:
                timers[model] = process.timer(model)
                runs[model] = (lambda p, m: lambda x: p.run(m, x))(process, model)
    return timers, runs


def close_all(processes: dict) -> None:
    for process in processes.values():
        process.close()
