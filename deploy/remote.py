"""Where libraries are timed: this machine, or a device reached through TVM's RPC tracker.

A device runs TVM's RPC server registered at a tracker under a key:

    host$   python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    device$ python -m tvm.exec.rpc_server --tracker HOST:9190 --key rpi5

and `--rpc-tracker HOST:9190 --rpc-key rpi5` (tuning, `deploy bench`) then uploads the
library built here, loads it there and times it there with TVM's time evaluator.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeployError


@dataclass(frozen=True)
class Rpc:
    """A TVM RPC tracker and the key its device registered with."""

    host: str
    port: int
    key: str
    timeout: float = 120.0
    wait: float = 60.0  # seconds to keep trying a tracker that does not answer yet

    @classmethod
    def parse(cls, tracker: str | None, key: str | None, wait: float = 60.0) -> Rpc | None:
        """From the CLI's --rpc-tracker HOST:PORT, --rpc-key and --rpc-wait; None when
        neither tracker nor key is given."""
        if tracker is None and key is None:
            return None
        if not wait >= 0:
            raise DeployError(f"--rpc-wait {wait:g}: give the seconds to wait, 0 or more")
        if tracker is None:
            raise DeployError("--rpc-key needs --rpc-tracker HOST:PORT")
        host, sep, port = tracker.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DeployError(f"--rpc-tracker {tracker!r} is not HOST:PORT, e.g. 10.0.0.2:9190")
        if not key:
            raise DeployError(
                "--rpc-tracker needs --rpc-key: the key the device's RPC server registered "
                "with (python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY)"
            )
        return cls(host, int(port), key, wait=wait)

    def __str__(self) -> str:
        return f"{self.key} via tracker {self.host}:{self.port}"


class Device:
    """A CPU to time libraries on: local (`rpc` None) or a remote session."""

    def __init__(self, rpc: Rpc | None = None) -> None:
        import tvm

        self.rpc = rpc
        if rpc is None:
            self.session, self.dev = None, tvm.cpu(0)
            return
        from tvm import rpc as tvm_rpc

        try:
            _reach(rpc)
            tracker = tvm_rpc.connect_tracker(rpc.host, rpc.port)
            self.session = tracker.request(rpc.key, priority=1, session_timeout=rpc.timeout)
        except Exception as exc:  # refused, unreachable, no such key: say which
            raise DeployError(
                f"cannot get a device {rpc}: {exc}; check that the tracker runs and that "
                "`python -m tvm.exec.query_rpc_tracker` lists the key"
            ) from None
        self.dev = self.session.cpu(0)

    def load(self, library: Path):
        """The library loaded where it is timed (uploaded first when remote)."""
        import tvm

        if self.session is None:
            return tvm.runtime.load_module(str(library))
        self.session.upload(str(library))
        return self.session.load_module(os.path.basename(library))

    def tensor(self, array: np.ndarray):
        import tvm

        return tvm.runtime.tensor(array, self.dev)

    def time(self, module, name: str, args, *, repeat: int = 5, min_repeat_ms: int = 50):
        """Seconds per call, one figure per repeat (each repeat lasts >= min_repeat_ms)."""
        timer = module.time_evaluator(
            name, self.dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        return list(timer(*args).results)


def _reach(rpc: Rpc) -> None:
    """Wait up to `rpc.wait` seconds for the tracker to accept a connection (TVM's own
    client keeps retrying for a fixed minute); raise the last OSError if it never does."""
    deadline = time.monotonic() + rpc.wait
    while True:
        try:
            socket.create_connection((rpc.host, rpc.port), timeout=5).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def median_us(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e6


@dataclass
class BundleTiming:
    bundle: str
    target: str
    where: str
    threads: int | None
    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


def time_bundle(
    bundle, device: Device, threads: int | None = None, repeat: int = 20, min_repeat_ms: int = 100
) -> BundleTiming:
    """TVM latency of one verified bundle on `device`, on its golden ECG input: one
    figure per repeat (the mean of as many calls as fill min_repeat_ms)."""
    from tvm import relax

    from .bundle import LIBRARY

    if bundle.device != "cpu":
        raise DeployError(
            f"bundle {bundle.name} is a {bundle.device} bundle; deploy bench times CPU bundles"
        )
    if device.session is None:
        runs, why = bundle.runnable_here()
        if not runs:
            raise DeployError(
                f"bundle {bundle.name} cannot run here: {why}; time it on its "
                "device with --rpc-tracker HOST:PORT --rpc-key KEY"
            )
    if threads is not None:
        from .predictor import set_threads

        set_threads(threads, device.session)
    try:
        with bundle.private_library() as library:  # the verified bytes, nothing else
            vm = relax.VirtualMachine(device.load(library), device.dev)
    except DeployError:
        raise
    except Exception as exc:  # another architecture, a runtime too old: unusable
        raise DeployError(
            f"bundle {bundle.name}: {device.rpc or 'this machine'} cannot "
            f"load {LIBRARY} ({type(exc).__name__}: {exc})"
        ) from None
    x, _ = bundle.golden["ecg"]
    vm.set_input("main", device.tensor(x))
    timer = vm.time_evaluator(
        "invoke_stateful", device.dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms
    )
    ms = [s * 1e3 for s in timer("main").results]
    return BundleTiming(
        bundle.name,
        bundle.target.name,
        str(device.rpc or "local"),
        threads,
        statistics.median(ms),
        float(np.percentile(ms, 90)),
        min(ms),
        len(ms),
    )


def time_bundles(
    paths,
    rpc: Rpc | None,
    threads: int | None,
    repeat: int,
    min_repeat_ms: int,
    json_path: Path | None = None,
) -> Iterator[BundleTiming]:
    """Time bundles one after another (every hash checked before the first is timed);
    yields each figure as it comes and writes them all to `json_path` at the end."""
    from .bundle import load_bundle

    bundles = [load_bundle(p) for p in paths]
    device = Device(rpc)
    rows = []
    for bundle in bundles:
        rows.append(time_bundle(bundle, device, threads, repeat, min_repeat_ms))
        yield rows[-1]
    if json_path is not None:
        try:
            json_path.write_text(json.dumps([r.to_json() for r in rows], indent=2) + "\n")
        except OSError as exc:
            raise DeployError(f"cannot write {json_path}: {exc.strerror}") from None
