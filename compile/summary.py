"""The summary table of built bundles: what `make build` prints at the end."""

from __future__ import annotations

from pathlib import Path

from deploy.bundle import LIBRARY, MANIFEST, Bundle, load_bundle
from deploy.errors import DeployError

from .errors import CompileError


def collect(folder: Path) -> tuple[list[Bundle], list[str]]:
    """Every bundle under `folder/<target>/<name>/` (verified), and the failed ones."""
    bundles, failures = [], []
    for manifest in sorted(Path(folder).glob(f"*/*/{MANIFEST}")):
        try:
            bundles.append(load_bundle(manifest.parent))
        except DeployError as exc:
            failures.append(str(exc))
    if not bundles and not failures:
        raise CompileError(f"no bundles under {folder}/; run `make build` first")
    bundles.sort(key=lambda b: (b.target.name, b.name[:4], -len(b.leads)))
    failures += [
        f"{p.relative_to(folder)}: parity or build failed (see its build.log)"
        for p in sorted(Path(folder).glob("*/*.failed"))
    ]
    return bundles, failures


def parity_cells(bundle: Bundle) -> tuple[str, str, str]:
    """(ONNX Runtime error, TVM error, status) for summaries; errors normalised. An int8
    bundle has no ONNX model, and its TVM error is against the int8 reference."""
    parity = bundle.manifest.parity
    ort, tvm = parity.onnxruntime, parity.tvm
    ort_cell = f"{ort.normalised:.1e}" if ort.ran else "-"
    if not tvm.ran:
        return ort_cell, str(tvm.how), "built"
    status = "ok" if tvm.passed else "FAILED"
    if bundle.manifest.precision != "fp32":
        status += f" (bit-exact {bundle.manifest.precision})" if tvm.passed else ""
    return ort_cell, f"{tvm.normalised:.1e} ({tvm.how})", status


def print_table(bundles: list[Bundle], failures: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="normalised error vs PyTorch on the golden inputs")
    table.add_column("target", no_wrap=True)
    table.add_column("variant", no_wrap=True)
    for column in ("library", "ONNX err", "TVM err", "status"):
        table.add_column(column)
    for b in bundles:
        size = b.manifest.files[LIBRARY].bytes
        table.add_row(b.target.name, b.name, f"{size / 1024:.0f} KiB", *parity_cells(b))
    console = Console()
    console.width = max(console.width, 110)  # a summary table, also in logs and pipes
    if bundles:
        console.print(table)
    for failure in failures:
        console.print(f"[red]FAILED[/] {failure}", soft_wrap=True)
