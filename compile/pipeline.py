"""The Relax pipeline per device kind: what turns the imported graph into scheduled code.

CPU: TVM's cpu_generic passes (legalize, fold constants, fuse conv + bias + relu and the
pooling into few kernels, lower). Without tuning records the loops keep their default
(unscheduled) order; with records (MetaSchedule database) the tuned schedules are applied.
GPU: TVM's default GPU pipeline, whose dlight rules bind every kernel to threads.
"""

from __future__ import annotations

from pathlib import Path

from .targets import Target


def pipeline_for(target: Target, tv_target, records: Path | None = None):
    import tvm
    from tvm import relax

    if target.device == "cuda":
        return relax.get_default_pipeline(tv_target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = cpu.library_dispatch_passes(tv_target) + cpu.legalize_passes(tv_target)
    if records is not None:
        from tvm.s_tir import meta_schedule as ms

        passes.append(relax.transform.MetaScheduleApplyDatabase(str(records)))
        _ = ms  # the database is read by the pass; imported for its registration
    passes += cpu.dataflow_lower_passes(tv_target) + cpu.finalize_passes(tv_target)

    @tvm.transform.module_pass(opt_level=0, name="mscnn_cpu_pipeline")
    def run(mod, _ctx):
        with tv_target:
            return tvm.transform.Sequential(passes)(mod)

    return run
