"""The bundle manifest: the contract between compile and every device, as typed data.

This is the only module that knows the JSON keys. `Manifest.to_json()` writes them;
`Manifest.from_json()` reads them back and checks every type and range on the way, so a
reader elsewhere uses attributes and never meets a value of the wrong kind. A manifest is
hostile until checked: duplicate keys, `NaN` literals, absurd nesting or integers, paths
that leave the bundle and control characters are refused with one clear line, and every
value quoted in a message is escaped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .errors import DeployError
from .rpeaks import RPeakRule

SCHEMA = "mscnn-edge/bundle"
SCHEMA_VERSION = 2  # 2: whole models (task, classes, detection rule, task parity)
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KiB; refuse to parse anything huge
MAX_DIGITS = 18  # integers in a manifest are sizes and shapes: 18 digits is plenty
MAX_ELEMENTS = 1 << 31  # a tensor of more elements is no ECG model's input or output
DEVICES = ("cpu", "cuda")
GPU_DEVICES = ("cuda",)
RUNS = ("native", "qemu", "gpu")
TASKS = ("features", "qrs_detection", "classification")
PRECISIONS = ("fp32", "int8", "fp16")  # int8: our integer kernels (compile/int8/kernels.py)


class ManifestError(DeployError):
    """The manifest is malformed: what is wrong and where, on one line."""


def quote(value: object, limit: int = 80) -> str:
    """`value` for an error message: control characters escaped, long text cut."""
    text = value if isinstance(value, str) else repr(value)
    out = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


# --------------------------------------------------------------------------------------
# The parts of a manifest


@dataclass(frozen=True)
class TargetInfo:
    name: str
    tvm: dict[str, Any]  # the TVM target as TVM takes it (JSON form)
    host: dict[str, Any] | None
    arch: str  # the CPU the library's host code runs on
    device: str  # "cpu" or "cuda"
    run: str  # "native", "qemu" or "gpu"
    emulator: list[str] | None  # how a non-native host runs it (qemu-user prefix)
    cpu_flags: list[str]
    cuda_kernels: list[str] | None  # compiled CUDA archs inside the library

    @property
    def is_gpu(self) -> bool:
        return self.device in GPU_DEVICES


@dataclass(frozen=True)
class ModelInfo:
    preset: str | None
    source: str
    config: dict[str, Any]
    in_channels: int
    num_parameters: int
    receptive_field: int
    variant_of: list[str]  # the leads of the model this variant was derived from
    head: str | None = None  # "ECG_SEQ_LAB_NET", "ECG_CRNN"; None: the bare backbone
    task: str = "features"  # what the output means: one of TASKS
    classes: list[str] = field(default_factory=list)  # output classes of a whole model


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GoldenCase:
    name: str
    input: str  # paths inside the bundle
    output: str

    @property
    def is_record(self) -> bool:
        """A real recording (judged on the task too), not a synthetic signal."""
        return self.name.startswith("record-")


@dataclass(frozen=True)
class Schedule:
    kind: str
    tile: dict[str, Any] | None
    tuning: dict[str, Any] | None  # record files used and how many kernels took them


@dataclass(frozen=True)
class Footprint:
    """What a device must hold: flash (library, weights) and RAM (activations)."""

    library_bytes: int
    weights_bytes: int | None = None
    activation_bytes: int | None = None
    output_bytes: int | None = None


@dataclass(frozen=True)
class Verdict:
    """One parity figure: ParityResult's fields, plus how it was run (or why not)."""

    passed: bool | None
    normalised: float | None
    max_abs: float | None = None
    tolerance: float | None = None
    detail: str | None = None
    how: str | None = None

    @classmethod
    def not_run(cls, how: str) -> Verdict:
        return cls(None, None, how=how)

    @property
    def ran(self) -> bool:
        return self.passed is not None


@dataclass(frozen=True)
class TaskVerdict:
    """Parity judged on the task: the same beats (detector) or decisions (classifier) as
    PyTorch's, case by case over the golden records."""

    kind: str  # "beats" or "decisions"
    cases: int
    identical: int
    how: str

    @property
    def passed(self) -> bool:
        return self.cases > 0 and self.identical == self.cases


@dataclass(frozen=True)
class Parity:
    tolerance: float
    onnxruntime: Verdict
    tvm: Verdict
    variant_contract: Verdict | None
    task: TaskVerdict | None = None


STATE_DTYPES = ("float32", "int64", "int16", "int8", "uint8")  # integers: an int8 step's


@dataclass(frozen=True)
class StateTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # one of STATE_DTYPES


@dataclass(frozen=True)
class StreamInfo:
    """A stream bundle's step: hop in samples per call, frames out per call (hop /
    reduction), the state the caller passes in and gets back (deploy/stream.py)."""

    hop: int
    reduction: int
    channels: int  # frames' channels (classes for a detector)
    delay_frames: int  # the step lags its input by this many frames
    look_ahead: int  # future input samples a frame needs beyond its own
    flush_steps: int  # empty hops that end any record, at most
    state_bytes: int
    states: list[StateTensor]


@dataclass(frozen=True)
class Saturation:
    """A layer whose int8 activations clipped on the calibration records."""

    layer: str
    clipped: int
    total: int


@dataclass(frozen=True)
class TaskAccuracy:
    """A detector's CPSC2019 score and F1 on held-out records, fp32 beside int8."""

    records: list[int]
    fp32_score: float
    fp32_f1: float
    int8_score: float
    int8_f1: float


@dataclass(frozen=True)
class DecisionAccuracy:
    """A classifier's decisions (logit > 0 per class) on held-out records: how many of
    int8's equal fp32's, and the logits' error against fp32."""

    records: list[int]
    decisions: int  # records x classes
    agreed: int
    max_abs: float
    normalised: float  # max_abs / max |fp32 logit|


@dataclass(frozen=True)
class Quantization:
    """An int8 bundle: how it was quantized, and how far it is from fp32. The golden
    outputs are the int8 reference's, judged bit for bit; the distance to fp32 is
    reported, never judged by the fp32 tolerance."""

    isa: str  # the kernels' int8 instruction set (compile/int8/kernels.py ISAS)
    input_dtype: str  # "int16" or "int8"
    method: str  # calibration: "percentile" or "max"
    calibration_records: list[int]
    weights_bytes: int  # int8 weights
    fp32_weights_bytes: int  # the same weights in fp32
    constant_bytes: int  # weights, biases, requantization and tables
    saturated: list[Saturation]  # layers that clipped during calibration
    fp32_max_abs: float  # on the golden ECG cases, against the fp32 model
    fp32_normalised: float  # the worst case's error / max |fp32 output|
    fp32_median_normalised: float  # the median case's
    accuracy: TaskAccuracy | None  # a detector's held-out beats; None otherwise
    decisions: DecisionAccuracy | None = None  # a classifier's held-out decisions


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    name: str
    target: TargetInfo
    model: ModelInfo
    leads: list[str]
    lead_indices: list[int]
    fs: int
    input: TensorInfo
    output: TensorInfo
    golden: list[GoldenCase]
    schedule: Schedule
    footprint: Footprint
    parity: Parity
    tools: dict[str, str]
    files: dict[str, FileEntry] = field(default_factory=dict)
    detect: RPeakRule | None = None  # the R-peak rule of a QRS detector
    stream: StreamInfo | None = None  # a stream bundle's step (None: a window bundle)
    precision: str = "fp32"  # one of PRECISIONS
    quantization: Quantization | None = None  # an int8 bundle's (None otherwise)

    @property
    def kind(self) -> str:
        return "window" if self.stream is None else "stream"

    @property
    def task_gates(self) -> bool:
        """Whether the golden records' beats or decisions must be the reference's: yes
        for fp32 (PyTorch's) and int8 (the int8 reference's, bit for bit); an fp16
        bundle's are reported, and its accuracy judged on held-out records."""
        return self.precision != "fp16"

    @property
    def tolerance_kind(self) -> str:
        """The row of the tolerance table (deploy/parity.py) its golden data is judged
        by: the device for fp32, the precision otherwise (int8: bit for bit)."""
        return self.target.device if self.precision == "fp32" else self.precision

    def to_json(self) -> str:
        return json.dumps(_write_manifest(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "manifest.json") -> Manifest:
        """Parse and validate; a ManifestError names the first problem found."""
        data = _parse(text, where)
        if not isinstance(data, dict):
            raise ManifestError(
                f"{where} is not an mscnn-edge bundle manifest ({_kind(data)}, not an object)"
            )
        return _read_manifest(_Obj(data, where, ""))


# --------------------------------------------------------------------------------------
# Writing: the key order is the file's, so rebuilds give identical manifests


def _write_manifest(m: Manifest) -> dict[str, Any]:
    t = m.target
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "name": m.name,
        "target": {
            "name": t.name,
            "tvm": t.tvm,
            "host": t.host,
            "arch": t.arch,
            "device": t.device,
            "run": t.run,
            "emulator": t.emulator,
            "cpu_flags": t.cpu_flags,
            "cuda_kernels": t.cuda_kernels,
        },
        "model": dict(vars(m.model)),
        "leads": m.leads,
        "lead_indices": m.lead_indices,
        "fs": m.fs,
        "input": _write_tensor(m.input),
        "output": _write_tensor(m.output),
        "detect": m.detect.to_dict() if m.detect else None,
        "stream": _write_stream(m.stream),
        "precision": m.precision,
        "quantization": _write_quantization(m.quantization),
        "golden": [dict(vars(g)) for g in m.golden],
        "schedule": dict(vars(m.schedule)),
        "footprint": dict(vars(m.footprint)),
        "parity": {
            "tolerance": m.parity.tolerance,
            "onnxruntime": _write_verdict(m.parity.onnxruntime),
            "tvm": _write_verdict(m.parity.tvm),
            "variant_contract": _write_verdict(m.parity.variant_contract),
            "task": dict(vars(m.parity.task)) if m.parity.task else None,
        },
        "tools": m.tools,
        "files": {rel: dict(vars(entry)) for rel, entry in m.files.items()},
    }


def _write_stream(info: StreamInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    out = {k: v for k, v in vars(info).items() if k != "states"}
    out["states"] = [
        {"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in info.states
    ]
    return out


def _write_quantization(q: Quantization | None) -> dict[str, Any] | None:
    if q is None:
        return None
    out = dict(vars(q))
    out["saturated"] = [dict(vars(s)) for s in q.saturated]
    out["accuracy"] = dict(vars(q.accuracy)) if q.accuracy else None
    out["decisions"] = dict(vars(q.decisions)) if q.decisions else None
    return out


def _write_tensor(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "layout": t.layout}


def _write_verdict(v: Verdict | None) -> dict[str, Any] | None:
    if v is None:
        return None
    if not v.ran:
        return {"passed": None, "normalised": None, "how": v.how}
    out = {
        "max_abs": v.max_abs,
        "normalised": v.normalised,
        "tolerance": v.tolerance,
        "passed": v.passed,
        "detail": v.detail or "",
    }
    if v.how is not None:
        out["how"] = v.how
    return out


# --------------------------------------------------------------------------------------
# Reading


def _parse(text: str | bytes, where: str) -> Any:
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{where} is larger than any real manifest "
            f"({len(text)} bytes > {MAX_MANIFEST_BYTES}); refusing to parse it"
        )
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
        )
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); rebuild the bundle"
        ) from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno}); rebuild the bundle"
        ) from None
    except RecursionError:
        raise ManifestError(
            f"{where} nests too deeply to be a manifest; rebuild the bundle"
        ) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise json.JSONDecodeError(f"duplicate key {quote(key)!s}", "", 0)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", "", 0)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise json.JSONDecodeError(f"an integer of {len(digits)} digits", "", 0)
    return int(digits)


class _Obj:
    """Typed access to one JSON object; errors name the field's path."""

    def __init__(self, data: Any, where: str, path: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(
                f"{where}: {path or 'the manifest'} must be a JSON object, got {_kind(data)}"
            )
        self.data, self.where, self.path = data, where, path

    def _field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str, value: Any = None) -> ManifestError:
        got = f", got {quote(value)}" if value is not None else ""
        return ManifestError(
            f"{self.where}: field {self._field(key)!r} must be {expected}{got}; rebuild the bundle"
        )

    def get(
        self, key: str, check: Callable[[Any], bool], expected: str, optional: bool = False
    ) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise ManifestError(
                f"{self.where}: manifest lacks {self._field(key)!r}; rebuild the bundle"
            )
        value = self.data[key]
        if value is None and optional:
            return None
        if not check(value):
            raise self.fail(key, expected, value)
        return value

    def str(self, key: str, optional: bool = False, choices: tuple[str, ...] = ()) -> Any:
        value = self.get(key, _is_text, "a string without control characters", optional)
        if choices and value is not None and value not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}", value)
        return value

    def int(self, key: str, optional: bool = False, minimum: int = 0) -> Any:
        return self.get(
            key, lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}", optional
        )

    def number(self, key: str, optional: bool = False) -> Any:
        value = self.get(key, _is_number, "a finite number", optional)
        return None if value is None else float(value)

    def bool(self, key: str, optional: bool = False) -> Any:
        return self.get(key, lambda v: isinstance(v, bool), "true or false", optional)

    def obj(self, key: str, optional: bool = False) -> Any:
        value = self.get(key, lambda v: isinstance(v, dict), "an object", optional)
        return None if value is None else _Obj(value, self.where, self._field(key))

    def strs(self, key: str, optional: bool = False, nonempty: bool = False) -> Any:
        value = self.get(
            key,
            lambda v: isinstance(v, list) and all(map(_is_text, v)) and (v or not nonempty),
            "a list of strings" + (" (not empty)" if nonempty else ""),
            optional,
        )
        return None if value is None else list(value)

    def ints(self, key: str, minimum: int = 0) -> list[int]:
        return list(
            self.get(
                key,
                lambda v: isinstance(v, list) and all(_is_int(i) and i >= minimum for i in v),
                f"a list of integers >= {minimum}",
            )
        )

    def plain(self, key: str, optional: bool = False) -> Any:
        """A JSON object whose content is opaque here (a TVM target, a model config)."""
        value = self.get(key, lambda v: isinstance(v, dict), "an object", optional)
        return None if value is None else value

    def list(self, key: str, nonempty: bool = False) -> list[Any]:
        return self.get(
            key,
            lambda v: isinstance(v, list) and (v or not nonempty),
            "a list" + (" (not empty)" if nonempty else ""),
        )


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number")


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and v.isprintable()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _read_manifest(root: _Obj) -> Manifest:
    schema = root.data.get("schema")
    if schema != SCHEMA:
        raise ManifestError(
            f"{root.where} is not an mscnn-edge bundle manifest (schema {quote(schema)})"
        )
    version = root.data.get("schema_version")
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise ManifestError(
            f"{root.where}: manifest schema version {quote(version)}; this "
            f"deploy reads version {SCHEMA_VERSION}: rebuild the bundle with "
            "a matching mscnn-edge"
        )
    files = _read_files(root)
    manifest = Manifest(
        name=root.str("name"),
        target=_read_target(root.obj("target")),
        model=_read_model(root.obj("model")),
        leads=root.strs("leads", nonempty=True),
        lead_indices=root.ints("lead_indices"),
        fs=root.int("fs", minimum=1),
        input=_read_tensor(root.obj("input"), (3,)),
        output=_read_tensor(root.obj("output"), (2, 3)),
        golden=_read_golden(root, files),
        schedule=_read_schedule(root.obj("schedule")),
        footprint=_read_footprint(root.obj("footprint")),
        parity=_read_parity(root.obj("parity")),
        tools=_read_tools(root.obj("tools")),
        files=files,
        detect=_read_rule(root),
        stream=_read_stream(root),
        precision=root.str("precision", optional=True, choices=PRECISIONS) or "fp32",
        quantization=_read_quantization(root),
    )
    _check_consistent(root, manifest)
    return manifest


def _read_target(t: _Obj) -> TargetInfo:
    return TargetInfo(
        name=t.str("name"),
        tvm=t.plain("tvm"),
        host=t.plain("host", optional=True),
        arch=t.str("arch"),
        device=t.str("device", choices=DEVICES),
        run=t.str("run", choices=RUNS),
        emulator=t.strs("emulator", optional=True, nonempty=True),
        cpu_flags=t.strs("cpu_flags"),
        cuda_kernels=t.strs("cuda_kernels", optional=True),
    )


def _read_model(m: _Obj) -> ModelInfo:
    return ModelInfo(
        preset=m.str("preset", optional=True),
        source=m.str("source"),
        config=m.plain("config"),
        in_channels=m.int("in_channels", minimum=1),
        num_parameters=m.int("num_parameters"),
        receptive_field=m.int("receptive_field", minimum=1),
        variant_of=m.strs("variant_of", nonempty=True),
        head=m.str("head", optional=True),
        task=m.str("task", choices=TASKS),
        classes=m.strs("classes"),
    )


def _read_tensor(t: _Obj, dims: tuple[int, ...]) -> TensorInfo:
    shape = tuple(t.ints("shape", minimum=1))
    if len(shape) not in dims or math.prod(shape) > MAX_ELEMENTS:
        count = " or ".join(map(str, dims))
        raise t.fail(
            "shape", f"{count} positive sizes of at most {MAX_ELEMENTS} elements", list(shape)
        )
    return TensorInfo(t.str("name"), shape, t.str("dtype", choices=("float32",)), t.str("layout"))


def _read_golden(root: _Obj, files: Mapping[str, FileEntry]) -> list[GoldenCase]:
    cases, names = [], set()
    for k, entry in enumerate(root.list("golden", nonempty=True)):
        g = _Obj(entry, root.where, f"golden[{k}]")
        case = GoldenCase(g.str("name"), g.str("input"), g.str("output"))
        if case.name in names:
            raise g.fail("name", "unique among the golden cases", case.name)
        names.add(case.name)
        for key in ("input", "output"):
            if getattr(case, key) not in files:
                raise g.fail(key, "a file hashed in the manifest", getattr(case, key))
        cases.append(case)
    return cases


def _read_schedule(s: _Obj) -> Schedule:
    return Schedule(s.str("kind"), s.plain("tile", optional=True), s.plain("tuning", optional=True))


def _read_footprint(f: _Obj) -> Footprint:
    return Footprint(
        f.int("library_bytes"),
        f.int("weights_bytes", optional=True),
        f.int("activation_bytes", optional=True),
        f.int("output_bytes", optional=True),
    )


def _read_verdict(v: _Obj | None) -> Verdict | None:
    if v is None:
        return None
    return Verdict(
        passed=v.bool("passed", optional=True),
        normalised=v.number("normalised", optional=True),
        max_abs=v.number("max_abs", optional=True),
        tolerance=v.number("tolerance", optional=True),
        detail=v.str("detail", optional=True),
        how=v.str("how", optional=True),
    )


def _read_parity(p: _Obj) -> Parity:
    ort, tvm = _read_verdict(p.obj("onnxruntime")), _read_verdict(p.obj("tvm"))
    assert ort is not None and tvm is not None  # obj() without optional never gives None
    task = p.obj("task", optional=True)
    if task is not None:
        task = TaskVerdict(
            task.str("kind", choices=("beats", "decisions")),
            task.int("cases"),
            task.int("identical"),
            task.str("how"),
        )
    return Parity(
        p.number("tolerance"),
        ort,
        tvm,
        _read_verdict(p.obj("variant_contract", optional=True)),
        task,
    )


def _read_stream(root: _Obj) -> StreamInfo | None:
    info = root.obj("stream", optional=True)
    if info is None:
        return None
    states = []
    for k, entry in enumerate(info.list("states")):
        t = _Obj(entry, root.where, f"stream.states[{k}]")
        shape = tuple(t.ints("shape", minimum=1))
        if math.prod(shape) > MAX_ELEMENTS:
            raise t.fail("shape", f"at most {MAX_ELEMENTS} elements", list(shape))
        states.append(StateTensor(t.str("name"), shape, t.str("dtype", choices=STATE_DTYPES)))
    numbers = {
        key: info.int(key, minimum=1 if key in ("hop", "reduction", "channels") else 0)
        for key in (
            "hop",
            "reduction",
            "channels",
            "delay_frames",
            "look_ahead",
            "flush_steps",
            "state_bytes",
        )
    }
    if numbers["hop"] % numbers["reduction"] or numbers["flush_steps"] < 1:
        raise info.fail("hop", "a multiple of 'reduction', with flush_steps >= 1", numbers["hop"])
    return StreamInfo(**numbers, states=states)


def _read_quantization(root: _Obj) -> Quantization | None:
    q = root.obj("quantization", optional=True)
    if q is None:
        return None
    saturated = []
    for k, entry in enumerate(q.list("saturated")):
        s = _Obj(entry, root.where, f"quantization.saturated[{k}]")
        saturated.append(Saturation(s.str("layer"), s.int("clipped"), s.int("total")))
    acc = q.obj("accuracy", optional=True)
    if acc is not None:
        acc = TaskAccuracy(
            acc.ints("records"),
            *(acc.number(k) for k in ("fp32_score", "fp32_f1", "int8_score", "int8_f1")),
        )
    dec = q.obj("decisions", optional=True)
    if dec is not None:
        dec = DecisionAccuracy(
            dec.ints("records"), dec.int("decisions"), dec.int("agreed"),
            dec.number("max_abs"), dec.number("normalised"),
        )  # fmt: skip
        if not 0 <= dec.agreed <= dec.decisions:
            raise ManifestError(
                f"{root.where}: quantization.decisions: agreed {dec.agreed} of "
                f"{dec.decisions}; rebuild the bundle"
            )
    return Quantization(
        isa=q.str("isa"),
        input_dtype=q.str("input_dtype", choices=("int16", "int8")),
        method=q.str("method"),
        calibration_records=q.ints("calibration_records"),
        weights_bytes=q.int("weights_bytes"),
        fp32_weights_bytes=q.int("fp32_weights_bytes"),
        constant_bytes=q.int("constant_bytes"),
        saturated=saturated,
        fp32_max_abs=q.number("fp32_max_abs"),
        fp32_normalised=q.number("fp32_normalised"),
        fp32_median_normalised=q.number("fp32_median_normalised"),
        accuracy=acc,
        decisions=dec,
    )


def _read_rule(root: _Obj) -> RPeakRule | None:
    rule = root.obj("detect", optional=True)
    if rule is None:
        return None
    try:
        return RPeakRule.from_dict(
            {
                "threshold": rule.number("threshold"),
                "min_rr_ms": rule.int("min_rr_ms"),
                "edge_ms": rule.int("edge_ms"),
                "reduction": rule.int("reduction", minimum=1),
                "fs": rule.int("fs", minimum=1),
            }
        )
    except DeployError as exc:
        raise ManifestError(f"{root.where}: field 'detect': {exc}; rebuild the bundle") from None


def _read_tools(t: _Obj) -> dict[str, str]:
    return {key: t.str(key) for key in t.data}


def _read_files(root: _Obj) -> dict[str, FileEntry]:
    listing = root.obj("files")
    files = {}
    for rel in listing.data:
        check_relative_path(rel, root.where)
        entry = listing.obj(rel)
        sha = entry.str("sha256")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise entry.fail("sha256", "64 lower-case hex digits", sha)
        files[rel] = FileEntry(sha, entry.int("bytes"))
    return files


def check_relative_path(rel: str, where: str) -> None:
    """A listed file must name a plain path inside the bundle: no '..', no absolute path,
    no empty or control-character component."""
    parts = PurePosixPath(rel).parts if _is_text(rel) else ()
    if (
        not parts
        or rel.startswith("/")
        or "\\" in rel
        or "\0" in rel
        or any(p in ("..", ".") for p in rel.split("/"))
    ):
        raise ManifestError(
            f"{where}: manifest names {quote(rel)!r}, which is not a path inside the bundle"
        )


def _check_consistent(root: _Obj, m: Manifest) -> None:
    if len(m.lead_indices) != len(m.leads):
        raise root.fail("lead_indices", f"one index per lead ({len(m.leads)})", m.lead_indices)
    if m.input.shape[1] != len(m.leads):
        raise ManifestError(
            f"{root.where}: input shape {list(m.input.shape)} has "
            f"{m.input.shape[1]} leads, the manifest lists {len(m.leads)}; "
            "rebuild the bundle"
        )
    if (m.precision == "int8") != (m.quantization is not None):
        raise root.fail("quantization", "present exactly when precision is int8", m.precision)
    if m.precision == "fp16" and m.stream is not None:
        raise root.fail("precision", "fp32 or int8 for a stream bundle", m.precision)


# --------------------------------------------------------------------------------------
# The Cortex-M build's report (mcu.json): what a microcontroller build measured, typed
# and versioned like the bundle manifest, and read back with the same checks.

MCU_SCHEMA = "mscnn-edge/mcu"
MCU_SCHEMA_VERSION = 1
MCU_PRECISIONS = ("fp32", "int8")
MCU_WEIGHTS = ("int16", "int8")  # how an int8 build stores its weights in flash
SPEED_ESTIMATE = "qemu instruction count, 1 instruction per cycle assumed"


@dataclass(frozen=True)
class McuFootprint:
    """Bytes a device must hold, from the ELF's sections (arm-none-eabi-size -A)."""

    flash_code: int  # vectors, code, read-only data other than weights, .data's image
    flash_weights: int  # the model's constants (.weights)
    ram_arena: int  # activations and the kernels' workspace pool (.arena)
    ram_static: int  # .data and .bss of the runtime and firmware
    stack_reserved: int  # the stack the linker script sets aside
    stack_peak: int | None = None  # the most of it ever used, measured under qemu

    @property
    def flash(self) -> int:
        return self.flash_code + self.flash_weights

    @property
    def ram(self) -> int:
        """Arena, static data and the stack as reserved (the budget a part must meet)."""
        return self.ram_arena + self.ram_static + self.stack_reserved


@dataclass(frozen=True)
class McuSpeed:
    """Speed *estimated* from qemu's instruction count: qemu is not cycle accurate, so
    the real-time figure assumes one instruction per cycle at `clock_hz`."""

    instructions: int  # per window, or per step of a stream (the median over the runs)
    window_seconds: float  # seconds of ECG those instructions process (window or hop)
    clock_hz: int
    peak_instructions: int | None = None  # a stream: its slowest step (latency)
    # The core's pipeline model (compile/mcu/estimate.py); older reports lack them: None.
    cycles: int | None = None  # estimated cycles per window or step
    cycle_method: str | None = None  # how they were estimated

    @property
    def instructions_per_second(self) -> float:
        """Instructions per second of ECG."""
        return self.instructions / self.window_seconds

    @property
    def cpu_load(self) -> float:
        """Share of the core's cycles that real time takes (estimate; < 1 keeps up)."""
        return self.instructions_per_second / self.clock_hz

    @property
    def cycle_load(self) -> float | None:
        """The same share from the cycle estimate (None without one)."""
        return None if self.cycles is None else self.cycles / self.window_seconds / self.clock_hz


@dataclass(frozen=True)
class McuEnergy:
    """Energy per second of ECG, *estimated*: the cycles one second of ECG takes (the
    cycle estimate, or qemu's instructions at one per cycle) times the part's published
    active current per MHz and its supply voltage. µA/MHz x M cycles x V = µJ, so the
    energy per second of ECG is the core's average power while it keeps up, in µW; at
    the part's clock it sleeps the rest of each second (`sleep_share`). The figure's
    source and whether it was confirmed travel with it; an unconfirmed or missing
    figure gives no energy (None)."""

    part: str
    clock_hz: int
    cycles_per_second: float  # per second of ECG
    cycles_from: str  # "llvm-mca" (the cycle estimate) or "instructions" (1 per cycle)
    active_ua_per_mhz: float | None  # the part's published active current per MHz
    supply_v: float | None
    sleep_ua: float | None  # its sleep current, where published
    source: str  # the document, revision and table the figures come from
    confirmed: bool  # every figure read in the source as cited
    provenance: str  # what was found, and what could not be confirmed

    @property
    def load(self) -> float:
        """Share of the part's cycles that real time takes (> 1: it does not keep up)."""
        return self.cycles_per_second / self.clock_hz

    @property
    def sleep_share(self) -> float:
        """Share of each second the core can sleep at the part's clock (0 if it cannot
        keep up)."""
        return max(0.0, 1.0 - self.load)

    @property
    def active_uj_per_second(self) -> float | None:
        """µJ the core's work takes per second of ECG (= its average µW for that work)."""
        if self.active_ua_per_mhz is None or self.supply_v is None:
            return None
        return self.cycles_per_second / 1e6 * self.active_ua_per_mhz * self.supply_v

    @property
    def average_uw(self) -> float | None:
        """The work's energy plus the sleep current for the rest of each second, µW
        (None without a published sleep current)."""
        active = self.active_uj_per_second
        if active is None or self.sleep_ua is None:
            return None
        return active + self.sleep_share * self.sleep_ua * self.supply_v


@dataclass(frozen=True)
class McuKernel:
    """One kernel call of a Cortex-M build's per-kernel profile (its firmware's SysTick
    read before each call under qemu -icount), per window or stream step."""

    call: int  # its place in the entry point's call sequence
    kernel: str
    instructions: int  # qemu's count, to SysTick's resolution (one tick: tens of them)
    macs: int | None  # multiply-accumulates it computes (int8 convs); None: not known
    cycles_per_instruction: float | None  # llvm-mca on its innermost loop; None: not timed

    @property
    def instructions_per_mac(self) -> float | None:
        return self.instructions / self.macs if self.macs else None


@dataclass(frozen=True)
class StreamFacts:
    """A stream step's protocol figures (mscnn/streaming.py): the hop, how many empty
    hops end a record, the frames it lags, its look-ahead in samples, its state's bytes."""

    hop: int
    flush_steps: int
    delay_frames: int
    look_ahead: int
    state_bytes: int


@dataclass(frozen=True)
class PartFit:
    """Whether the measured footprint fits a part, region by region, and how full it is.
    The arena is one array, so it must fit one contiguous RAM region (`arena_region`);
    reports written before regions carry only fits, flash_used and ram_used."""

    fits: bool
    flash_used: float  # share of the part's flash
    ram_used: float  # share of the part's RAM, all regions together
    arena_region: str | None = None  # the RAM region the arena is placed in
    arena_region_bytes: int | None = None  # that region's size
    arena_used: float | None = None  # the arena's share of that region (> 1: it cannot fit)
    why: str | None = None  # why it does not fit, with the numbers; None when it fits


@dataclass(frozen=True)
class McuSample:
    """The real record a build ships as its example input (a package's example/input.f32,
    lead-major float32), and the R-peaks the reference model and rule give on it."""

    record: str  # the golden case's name
    samples: int  # per lead
    beats: tuple[int, ...]


@dataclass(frozen=True)
class McuReport:
    """A Cortex-M build: where it runs, what it is, and what was measured under qemu."""

    board: str
    core: str
    precision: str  # one of MCU_PRECISIONS
    weights: str | None  # an int8 build's weight storage (MCU_WEIGHTS); None for fp32
    samples: int  # the window, or the length of the records streamed
    hop: int | None  # a stream step's hop; None for a window model
    stream: StreamFacts | None
    footprint: McuFootprint
    speed: McuSpeed
    parity: Verdict  # the worst golden case against PyTorch (int8: its reference)
    beats_equal: bool | None  # detector: every real record's beats are the reference's
    fits: dict[str, PartFit]
    # Added with the packages' own README (older reports lack them: None):
    fs: int | None = None  # the input's sampling rate, Hz (samples are mV)
    firmware_beats_equal: bool | None = None  # the firmware's own R-peak rule (C), likewise
    sample: McuSample | None = None
    # a stream build for a sensor at another rate (compile mcu --input-fs): the rate its
    # firmware takes and resamples to `fs`; beats are in its clock. None: it takes `fs`
    input_fs: int | None = None
    profile: tuple[McuKernel, ...] | None = None  # per kernel call; older reports: None
    energy: McuEnergy | None = None  # the energy estimate; older reports: None

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates per window or step, from the profile (None without)."""
        return sum(k.macs or 0 for k in self.profile) if self.profile else None

    def to_json(self) -> str:
        return json.dumps(_write_mcu(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "mcu.json") -> McuReport:
        """Parse and validate; a ManifestError names the first problem found."""
        data = _parse(text, where)
        if not isinstance(data, dict):
            raise ManifestError(f"{where} is not an mscnn-edge Cortex-M report ({_kind(data)})")
        return _read_mcu(_Obj(data, where, ""))


def _write_mcu(r: McuReport) -> dict[str, Any]:
    fp, speed = r.footprint, r.speed
    return {
        "schema": MCU_SCHEMA,
        "schema_version": MCU_SCHEMA_VERSION,
        "board": r.board,
        "core": r.core,
        "precision": r.precision,
        "weights": r.weights,
        "samples": r.samples,
        "hop": r.hop,
        "stream": dict(vars(r.stream)) if r.stream else None,
        "footprint": {**dict(vars(fp)), "flash": fp.flash, "ram": fp.ram},
        "speed": {
            **dict(vars(speed)),
            "instructions_per_second": speed.instructions_per_second,
            "cpu_load": speed.cpu_load,
            "cycle_load": speed.cycle_load,
            "estimate": SPEED_ESTIMATE,
        },
        "parity": _write_verdict(r.parity),
        "beats_equal": r.beats_equal,
        "fits": {name: dict(vars(f)) for name, f in r.fits.items()},
        "fs": r.fs,
        "firmware_beats_equal": r.firmware_beats_equal,
        "sample": {**dict(vars(r.sample)), "beats": list(r.sample.beats)} if r.sample else None,
        "input_fs": r.input_fs,
        "macs": r.macs,
        "profile": None if r.profile is None else [_write_kernel(k) for k in r.profile],
        "energy": None if r.energy is None else _write_energy(r.energy),
    }


def _write_energy(e: McuEnergy) -> dict[str, Any]:
    derived = ("load", "sleep_share", "active_uj_per_second", "average_uw")
    return {**dict(vars(e)), **{name: getattr(e, name) for name in derived}}


def _read_energy(root: _Obj) -> McuEnergy | None:
    if root.data.get("energy") is None:
        return None
    e = root.obj("energy")
    names = ("cycles_per_second", "active_ua_per_mhz", "supply_v", "sleep_ua")
    figures = [e.number(n, optional=n != "cycles_per_second") for n in names]
    for name, value in zip(names, figures, strict=True):
        if value is not None and value < 0:
            raise e.fail(name, "a number >= 0", value)
    return McuEnergy(
        e.str("part"),
        e.int("clock_hz", minimum=1),
        figures[0],
        e.str("cycles_from", choices=("llvm-mca", "instructions")),
        *figures[1:],
        e.str("source"),
        e.bool("confirmed"),
        e.str("provenance"),
    )


def _write_kernel(k: McuKernel) -> dict[str, Any]:
    return {**dict(vars(k)), "instructions_per_mac": k.instructions_per_mac}


def _read_mcu(root: _Obj) -> McuReport:
    schema, version = root.str("schema"), root.get("schema_version", _is_int, "an integer")
    if schema != MCU_SCHEMA or version != MCU_SCHEMA_VERSION:
        raise ManifestError(
            f"{root.where}: schema {quote(schema)!r} version {version}; deploy reads "
            f"{MCU_SCHEMA} version {MCU_SCHEMA_VERSION}: rebuild with python -m compile mcu"
        )
    precision = root.str("precision", choices=MCU_PRECISIONS)
    weights = root.str("weights", optional=True, choices=MCU_WEIGHTS)
    if (weights is None) != (precision == "fp32"):
        raise root.fail("weights", "given exactly for an int8 build", weights)
    hop, stream = root.int("hop", optional=True, minimum=1), root.obj("stream", optional=True)
    if (hop is None) != (stream is None):
        raise root.fail("stream", "present exactly when hop is", hop)
    fits, sample = root.obj("fits"), root.obj("sample", optional=True)
    return McuReport(
        board=root.str("board"),
        core=root.str("core"),
        precision=precision,
        weights=weights,
        samples=root.int("samples", minimum=1),
        hop=hop,
        stream=_read_stream_facts(stream) if stream else None,
        footprint=_read_mcu_footprint(root.obj("footprint")),
        speed=_read_speed(root.obj("speed")),
        parity=_read_verdict(root.obj("parity")),
        beats_equal=root.bool("beats_equal", optional=True),
        fits={name: _read_fit(fits.obj(name)) for name in fits.data},
        fs=root.int("fs", optional=True, minimum=1),
        firmware_beats_equal=root.bool("firmware_beats_equal", optional=True),
        sample=_read_sample(sample) if sample else None,
        input_fs=root.int("input_fs", optional=True, minimum=1),
        profile=_read_profile(root),
        energy=_read_energy(root),
    )


def _read_profile(root: _Obj) -> tuple[McuKernel, ...] | None:
    if root.data.get("profile") is None:
        return None
    rows = [_Obj(row, root.where, f"profile[{i}]") for i, row in enumerate(root.list("profile"))]
    return tuple(
        McuKernel(
            r.int("call"),
            r.str("kernel"),
            r.int("instructions"),
            r.int("macs", optional=True),
            r.number("cycles_per_instruction", optional=True),
        )
        for r in rows
    )


def _read_stream_facts(s: _Obj) -> StreamFacts:
    names = ("hop", "flush_steps", "delay_frames", "look_ahead", "state_bytes")
    return StreamFacts(*(s.int(n) for n in names))


def _read_mcu_footprint(f: _Obj) -> McuFootprint:
    names = ("flash_code", "flash_weights", "ram_arena", "ram_static", "stack_reserved")
    return McuFootprint(*(f.int(n) for n in names), f.int("stack_peak", optional=True))


def _read_speed(s: _Obj) -> McuSpeed:
    seconds = s.number("window_seconds")
    if seconds <= 0:
        raise s.fail("window_seconds", "a positive number", seconds)
    return McuSpeed(
        s.int("instructions"),
        seconds,
        s.int("clock_hz", minimum=1),
        s.int("peak_instructions", optional=True),
        s.int("cycles", optional=True),
        s.str("cycle_method", optional=True),
    )


def _read_fit(f: _Obj) -> PartFit:
    return PartFit(
        f.bool("fits"),
        f.number("flash_used"),
        f.number("ram_used"),
        f.str("arena_region", optional=True),
        f.int("arena_region_bytes", optional=True, minimum=1),
        f.number("arena_used", optional=True),
        f.str("why", optional=True),
    )


def _read_sample(s: _Obj) -> McuSample:
    beats = s.get(
        "beats",
        lambda v: isinstance(v, list) and all(_is_int(b) and b >= 0 for b in v),
        "a list of sample indices",
    )
    return McuSample(s.str("record"), s.int("samples", minimum=1), tuple(beats))
