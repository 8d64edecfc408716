"""The summary table of built bundles: what `make build` prints at the end."""

from __future__ import annotations

from pathlib import Path

from deploy.bundle import LIBRARY, MANIFEST, Bundle, load_bundle
from deploy.describe import MCU_REPORT, load_mcu_report
from deploy.errors import DeployError
from deploy.manifest import McuReport


def collect(folder: Path) -> tuple[list[Bundle], list[str]]:
    """Every bundle under `folder/<target>/<name>/` (verified), and the failed ones."""
    bundles, failures = [], []
    for manifest in sorted(Path(folder).glob(f"*/*/{MANIFEST}")):
        try:
            bundles.append(load_bundle(manifest.parent))
        except DeployError as exc:
            failures.append(str(exc))
    bundles.sort(key=lambda b: (b.target.name, b.name[:4], -len(b.leads)))
    failures += [
        f"{p.relative_to(folder)}: parity or build failed (see its build.log)"
        for p in sorted(Path(folder).glob("*/*.failed"))
    ]
    return bundles, failures


def collect_mcu(folder: Path) -> tuple[list[tuple[Path, McuReport]], list[str]]:
    """Every Cortex-M build under `folder/mcu/<name>/` (its typed report), and the
    unreadable ones."""
    reports, failures = [], []
    for report in sorted(Path(folder).glob(f"mcu/*/{MCU_REPORT}")):
        try:
            reports.append((report.parent, load_mcu_report(report.parent)))
        except DeployError as exc:
            failures.append(str(exc))
    return reports, failures


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


def _milliwatts(r: McuReport) -> str:
    """The energy estimate per second of ECG in mW (= mJ per s), * if its figure is not
    confirmed, - without one."""
    active = r.energy.active_uj_per_second if r.energy is not None else None
    if active is None:
        return "-"
    return f"{active / 1e3:.2f}" + ("" if r.energy.confirmed else "*")


def print_mcu_table(reports: list[tuple[Path, McuReport]]) -> None:
    """Footprint, speed estimate, fit and parity of each Cortex-M build."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Cortex-M builds under qemu (load: by instruction count; by llvm-mca cycles; "
        "mW: the energy estimate, * from a figure not confirmed, - none)"
    )
    columns = ("build", "flash KiB (code + weights)", "RAM KiB", "M instr/s", "instr/MAC")
    for column in (*columns, "load: instr; cycles", "mW"):
        table.add_column(column, no_wrap=True)
    table.add_column("fits")
    table.add_column("parity")
    for folder, r in reports:
        fp, speed = r.footprint, r.speed
        parity = "ok" if r.parity.passed else "FAILED"
        if r.parity.passed and r.precision == "int8":
            parity += " (bit-exact int8)"
        if r.beats_equal is not None:
            parity += ", beats " + ("equal" if r.beats_equal else "DIFFER")
        table.add_row(
            folder.name,
            f"{fp.flash / 1024:.0f} ({fp.flash_code / 1024:.0f} + {fp.flash_weights / 1024:.0f})",
            f"{fp.ram / 1024:.0f}",
            f"{speed.instructions_per_second / 1e6:.1f}",
            f"{speed.instructions / r.macs:.2f}" if r.macs else "-",
            f"{100 * speed.cpu_load:.0f}%"
            + (f"; {100 * speed.cycle_load:.0f}%" if speed.cycles is not None else "")
            + f" @ {speed.clock_hz / 1e6:g} MHz",
            _milliwatts(r),
            ", ".join(name for name, fit in r.fits.items() if fit.fits) or "none",
            parity,
        )
    console = Console()
    console.width = max(console.width, 170)
    console.print(table)
