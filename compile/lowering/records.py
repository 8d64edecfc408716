"""Tuning records: the tiles `make tune` found, read by every build of their target.

compile/tuning/<target>/<preset>.b<batch>x<samples>.json, one file per preset and input
shape (every lead variant in it), keyed by the kernel's workload_key. A build reads every
file of its target and takes, per kernel, the fastest record. Kept apart from the search
(compile/lowering/tune.py) so that a build never imports MetaSchedule.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

from ..errors import CompileError
from ..targets import Target

RECORDS_DIR = Path(__file__).resolve().parents[1] / "tuning"
FORMAT = "mscnn-edge tuning records"
VERSION = 1


def records_file(target: Target, preset: str, batch: int, samples: int) -> Path:
    return RECORDS_DIR / target.name / f"{preset}.b{batch}x{samples}.json"


def load_records(target: Target, folder: Path | None = None) -> tuple[dict, list[dict]]:
    """Every record file of `target`: ({workload_key: (t_tile, f_vecs)}, the files used).

    Where several files hold a kernel, the fastest measurement wins. A malformed file
    is an error naming it (a build must not silently lose its tuning)."""
    folder = (folder or RECORDS_DIR) / target.name
    best: dict[str, tuple[float, tuple[int, int]]] = {}
    used = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _read_records(path, target)
        for key, rec in data["records"].items():
            tile = (int(rec["t_tile"]), int(rec["f_vecs"]))
            if key not in best or rec["us"] < best[key][0]:
                best[key] = (float(rec["us"]), tile)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        used.append(
            {
                "file": f"{target.name}/{path.name}",
                "sha256": digest,
                "kernels": len(data["records"]),
            }
        )
    return {key: tile for key, (_, tile) in best.items()}, used


def _read_records(path: Path, target: Target) -> dict:
    fix = f"delete it or re-run `make tune TARGET={target.name}`"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompileError(f"tuning records {path} are unreadable ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CompileError(f"{path} is not a mscnn-edge tuning record file; {fix}")
    if data.get("version") != VERSION:
        raise CompileError(
            f"{path} has record version {data.get('version')!r}, this "
            f"mscnn-edge reads version {VERSION}; {fix}"
        )
    if data.get("target") != target.name:
        raise CompileError(
            f"{path} holds records for target {data.get('target')!r}, not {target.name!r}; {fix}"
        )
    records = data.get("records")
    if not isinstance(records, dict):
        raise CompileError(f"{path} has no 'records' table; {fix}")
    for key, rec in records.items():
        ok = (
            isinstance(rec, dict)
            and all(isinstance(rec.get(k), int) and rec[k] > 0 for k in ("t_tile", "f_vecs"))
            and isinstance(rec.get("us"), int | float)
            and rec["us"] > 0
        )
        if not ok:
            raise CompileError(
                f"{path}: record {key!r} needs positive integers t_tile and "
                f"f_vecs and a positive time 'us'; {fix}"
            )
    return data


def write_records(
    path: Path, target: Target, covers: dict, records: list[dict], summary: dict
) -> Path:
    import tvm

    data = {
        "format": FORMAT,
        "version": VERSION,
        "target": target.name,
        "tvm_target": dict(target.tvm),
        "tvm": tvm.__version__,
        "covers": covers,
        "tuning": {
            **summary,
            "search": "MetaSchedule evolutionary search (random cost model) over the mscnn "
            "conv schedule's (t_tile, f_vecs) space, every point measured",
            "date": datetime.date.today().isoformat(),
        },
        "records": {r.pop("key"): r for r in sorted(records, key=lambda r: r["kernel"])},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path
