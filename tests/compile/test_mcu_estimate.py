"""The cycle estimate (compile/mcu/estimate.py): llvm-mca on small known loops, the
innermost loop found in objdump's text, and the estimate's arithmetic. No qemu, no
build: each test runs llvm-mca a few times (well under a second each)."""

import re
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compile.mcu import estimate
from compile.mcu.boards import CORES

pytestmark = pytest.mark.skipif(
    shutil.which("llvm-mca") is None,
    reason="needs llvm-mca (Debian's llvm): run `make toolchains` as root",
)

# Two loads feeding two smlad: the 2 x 1 tile's inner loop.
LOOP = ("ldr r1, [r0], #4", "ldr r2, [r3], #4", "smlad r4, r1, r2, r4", "smlad r5, r1, r1, r5")


def _mca_report(lines, core: str) -> dict[str, float]:
    """llvm-mca's own summary of `lines`, read here apart from estimate.llvm_mca."""
    tvm = CORES[core].tvm
    done = subprocess.run(
        ["llvm-mca", f"-mtriple={tvm['mtriple']}", f"-mcpu={tvm['mcpu']}", "-iterations=100"],
        input=".Lloop:\n" + "\n".join(lines) + "\n", capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.findall(r"^(Instructions|Total Cycles|IPC):\s+([\d.]+)$", done.stdout, re.M)
    return {k: float(v) for k, v in found}


@pytest.mark.parametrize("core", ["cortex-m4", "cortex-m7", "cortex-m55"])
def test_a_known_loop_gets_llvm_mcas_ratio(core):
    instructions, cycles = estimate.llvm_mca(LOOP, CORES[core].tvm)
    report = _mca_report(LOOP, core)
    assert instructions == report["Instructions"] == len(LOOP) * estimate.ITERATIONS
    assert cycles == report["Total Cycles"]
    cpi = estimate.Loop("f", LOOP, instructions, cycles).cycles_per_instruction
    assert cpi == pytest.approx(1 / report["IPC"], abs=0.01)  # IPC is printed rounded


def test_the_dual_issue_m7_needs_fewer_cycles_than_the_m4():
    """LLVM's models: the M4 issues one instruction a cycle, the M7 up to two (four
    independent adds that set no flags), but not two loads and two smlad."""
    adds = tuple(f"add r{i}, r{i}, #1" for i in range(4))
    m4, m7 = (estimate.llvm_mca(adds, CORES[c].tvm) for c in ("cortex-m4", "cortex-m7"))
    assert m4[1] / m4[0] >= 1.0 and m7[1] / m7[0] < 0.6
    m7_mac = estimate.llvm_mca(LOOP, CORES["cortex-m7"].tvm)
    assert m7_mac[1] / m7_mac[0] > 1.0


OBJDUMP = """
00000000 <k_compute_>:
   0:\tpush\t{r4, lr}
   2:\tmovs\tr2, #0
   4:\tldr.w\tr1, [r0, #4]!
   8:\tite\teq
   a:\taddeq\tr2, #1
   b:\tsubne.w\tr2, r2, #1
   c:\tsmlad\tr4, r1, r1, r4
  10:\tldr\tr3, [r0, #8]\t@ 0x8
  12:\tsubs\tr3, #1
  14:\tbne.n\t4 <k_compute_+0x4>
  16:\tadds\tr2, #1
  18:\tcmp\tr2, #9
  1a:\tbne.n\t2 <k_compute_+0x2>
  1c:\tldrsb.w\tr1, [r0, #1]!
  20:\tstrh.w\tr1, [r3, #2]!
  24:\tldrsb.w\tr1, [r0, #1]!
  28:\tstrh.w\tr1, [r3, #2]!
  2c:\tldrsb.w\tr1, [r0, #1]!
  30:\tstrh.w\tr1, [r3, #2]!
  34:\tsubs\tr2, #1
  36:\tbne.n\t1c <k_compute_+0x1c>
  38:\tpop\t{r4, pc}

00000040 <straight_compute_>:
  40:\tadds\tr0, #1
  42:\tbx\tlr
"""


def test_the_innermost_loop_is_read_from_the_object_code():
    bodies = estimate.functions(OBJDUMP)
    assert set(bodies) == {"k_compute_", "straight_compute_"}
    loop = estimate.assembly(estimate.innermost_loop(bodies["k_compute_"]))
    # the inner loop with the smlad (4..14), not the outer (2..1a) nor the longer copy
    # loop (1c..36); no IT marker nor the conditions it sets, no .w, the label as target
    assert loop == (
        "ldr r1, [r0, #4]!",
        "add r2, #1",
        "sub r2, r2, #1",
        "smlad r4, r1, r1, r4",
        "ldr r3, [r0, #8]",
        "subs r3, #1",
        "bne .Lloop",
    )
    instructions, cycles = estimate.llvm_mca(loop, CORES["cortex-m7"].tvm)
    assert instructions == len(loop) * estimate.ITERATIONS and cycles > 0
    # a kernel with no loop is timed straight through
    assert len(estimate.innermost_loop(bodies["straight_compute_"])) == 2


def test_estimate_arithmetic_on_a_known_profile():
    """Kernels at their ratio; what the profile leaves out (or llvm-mca could not time)
    at one cycle per instruction: 1000 x 0.5 + 500 x 1 + (1600 - 1500) x 1."""
    assert estimate.estimate_cycles(1600, [(1000, 0.5), (500, None)]) == 1100
    ratio = estimate.llvm_mca(LOOP, CORES["cortex-m7"].tvm)
    cpi = ratio[1] / ratio[0]
    assert estimate.estimate_cycles(3000, [(2000, cpi), (1000, 1.0)]) == pytest.approx(
        2000 * cpi + 1000
    )


@given(st.lists(st.integers(0, 10**7), max_size=20), st.integers(0, 10**6))
def test_one_cycle_each_is_the_instruction_count(counts, outside):
    assert estimate.estimate_cycles(sum(counts) + outside, [(n, 1.0) for n in counts]) == (
        sum(counts) + outside
    )
