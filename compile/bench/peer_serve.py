"""The side of a benchmark peer that runs in the peer's own virtual environment.

A peer (LiteRT, ExecuTorch) pins packages that clash with ours, so it runs as a child
process under its venv's interpreter; compile/bench/peers.py starts it and talks to it.
This file imports numpy and the standard library only: the peer scripts
(peer_litert.py, peer_executorch.py) import it as a sibling module.

The child builds its models from SPEC.npz (`x`: the timing input; `held_out`: records
whose outputs the host judges; whatever else the peer needs), then prints one JSON line,
`{"models": {name: {"ok": true, "bytes": N} | {"ok": false, "error": "one line"}}}`, and
answers one JSON line per request line on stdin until stdin closes:

- `{"op": "time", "model": m, "runs": n}` -> `{"ms": [n milliseconds]}`: n back-to-back
  calls on `x`, numpy in and numpy out, as the host times its own runtimes;
- `{"op": "run", "model": m, "input": a.npy, "output": b.npy}` -> `{"ok": true}`: the
  records of a.npy (records, leads, samples) one call each, outputs stacked into b.npy.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

# The protocol has stdout to itself: whatever the peer's libraries print (converters log
# to stdout, some from C) goes to stderr instead.
PROTOCOL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr


CALIBRATION_PERCENTILE = 99.9  # as compile/int8/quantize.py's default


def clipped(calibration: np.ndarray) -> np.ndarray:
    """The calibration records clipped at the CALIBRATION_PERCENTILE-th percentile of their
    magnitudes. The peers' calibration takes each tensor's min and max (TFLite's converter,
    the XNNPACK quantizer's observers), and two CPSC2019 records clip at 33 mV (artefacts,
    ten times an ordinary beat); ours takes that percentile for every tensor, which
    neither peer offers, so their input range gets it here."""
    bound = np.percentile(np.abs(calibration), CALIBRATION_PERCENTILE)
    return np.clip(calibration, -bound, bound)


def one_line(exc: BaseException) -> str:
    """The peer's own error, on one line (its first line that says something)."""
    text = f"{type(exc).__name__}: {exc}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def wanted(data, models: tuple[str, ...]) -> tuple[str, ...]:
    """The models SPEC.npz asks for (`models`, optional: all of them by default)."""
    return tuple(str(m) for m in data["models"] if m in models) if "models" in data else models


def build_all(builders: dict) -> tuple[dict, dict]:
    """name -> call for every builder that succeeds, and the status line of each."""
    calls, status = {}, {}
    for name, build in builders.items():
        try:
            call, size = build()
        except Exception as exc:  # the peer refused the model: report, never crash
            traceback.print_exc(file=sys.stderr)
            status[name] = {"ok": False, "error": one_line(exc)}
            continue
        calls[name] = call
        status[name] = {"ok": True, "bytes": int(size)}
    return calls, status


def _answer(request: dict, calls: dict, x: np.ndarray) -> dict:
    call = calls[request["model"]]
    if request["op"] == "time":
        out = []
        for _ in range(int(request["runs"])):
            start = time.perf_counter()
            call(x)
            out.append((time.perf_counter() - start) * 1e3)
        return {"ms": out}
    if request["op"] == "run":
        records = np.load(request["input"])
        outputs = np.stack([call(records[i : i + 1])[0] for i in range(len(records))])
        np.save(request["output"], outputs)
        return {"ok": True}
    raise ValueError(f"unknown op {request['op']!r}")


def serve(calls: dict, status: dict, x: np.ndarray) -> int:
    """Announce the models, then answer requests until stdin closes."""
    print(json.dumps({"models": status}), file=PROTOCOL, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = _answer(request, calls, x)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            answer = {"error": one_line(exc)}
        print(json.dumps(answer), file=PROTOCOL, flush=True)
    return 0
