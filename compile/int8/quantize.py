"""Post-training int8 quantization of a preset model, and the int8 reference that defines it.

Why: int8 weights are 4x smaller than fp32 (what decides whether a model fits a
microcontroller's flash) and the CPUs these models run on multiply-accumulate several int8
pairs per fp32 FMA (AVX-512 VNNI `vpdpbusd`, Arm `sdot`, Cortex-M `smlad`). The arithmetic
below uses integer multipliers and shifts only, so a microcontroller can run it as it is.
`run_int8` (numpy) *is* the definition: the TVM program of `compile.int8.kernels` must equal it bit
for bit.

The arithmetic, for a `QuantizedModel`:

- Input: q = clip(rint(float32(x) * inv_scale), lo, hi), `inv_scale` a float32, rint
  rounding half to even, int16 by default (the mixed-precision part: `quantize_model`
  says why) or int8. The only float arithmetic before the output.
- Tensors: per-tensor scale, zero point 0. ReLU outputs inside a block are uint8 [0, 255]
  (non-negative, so the full byte is resolution); a block's output (after its BatchNorm,
  signed) and the head's tensors are int8 [-128, 127]. A max-pool keeps its input's scale
  and is exact on integers; the branches' last convs requantize to one shared scale, so
  their concatenation is a plain copy.
- Weights: a conv-level norm (if the config has one) folded into the conv first; then per
  output channel symmetric int8 in [-127, 127]: s_w = max|w| / 127, w_q = rint(w / s_w).
  Bias int32: rint(b / (s_in * s_w)).
- Accumulation in int32 (zero padding is exact: the zero point is 0):
  acc[f, t] = bias[f] + sum_{c, k} w_q[f, c, k] * x_q[g(f) * C_g + c, t + d * k - pad].
  Quantization refuses a layer whose worst-case |acc| could reach 2^31.
- Requantization, per output channel, int64 intermediates:
      y = clip((A * m + r) >> s, lo, hi),   A = max(acc, 0) for a ReLU layer, else acc
  with m the multiplier (|m| in [2^30, 2^31) except for tiny scales; negative where a
  BatchNorm scale is), s the shift in [1, 62], r = 2^(s-1) + rint(offset * 2^s) and `>>`
  the arithmetic (flooring) shift: round half up. The BatchNorm that follows a block's last
  ReLU is an affine map per channel, folded into that conv's m and r (folding it into the
  next conv instead would be wrong at the edges, where that conv pads with zeros).
- Head (the detector's per-frame MLP): linear -> requantize to int8 -> activation by a
  256-entry table, built once from the model's own activation module
  (lut[q + 128] = clip(rint(act(q * s_pre) / s_post))) -> next linear. The last linear's
  int32 accumulator is the output: logits = float32(acc) * float32(s_in * s_w).
  A backbone's output is float32(q) * float32(s) of the concatenated features.
- Classifier (ECG_CRNN) tail, on the concatenated int8 features h (channels, frames):
  squeeze-excitation's mean over frames is the int32 sum requantized to int8 (the 1/frames
  in the multiplier), its MLP as the head's, the last table the sigmoid to uint8 e in
  units of 1/255. Global pooling takes max over frames of h (or the sum, for "avg"); as
  e > 0 scales every frame of a channel alike, max(h * e) = e * max(h), so the pooled
  value is multiplied by e in int32 and requantized to int8. Then the head, on one row.
- Reduced-lead classifiers (`reduce_leads`): the full model's quantization with the
  dropped leads' convs removed (per output channel: their channels simply go), and the
  dropped channels' sums and maxima, constants per input length, computed by the
  reference on zero leads. So a variant equals the full int8 model on zero-filled leads
  bit for bit, as the fp32 variant equals the fp32 model.

Calibration sets each tensor's scale from the fp32 model's activations on real ECG: the
99.9th percentile of its magnitudes by default, or its maximum ("max"). The maximum lets
two CPSC2019 records whose signal clips at 33 mV (artefacts) set every scale, and the
detector then loses most beats of ordinary 1-3 mV records (held-out score 0.24 against
fp32's 0.90); the percentile clips those artefacts instead. A classifier that max-pools
its features takes their range from the per-channel maxima over frames (what the pooling
keeps). Models are calibrated on records `CALIBRATION_RECORDS` (CPSC2019 or CinC 2021)
and judged on `HELD_OUT_RECORDS`, never both.
"""

from __future__ import annotations

import hashlib
import logging
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

import mscnn
from mscnn.heads import ECG_CRNN, ECG_SEQ_LAB_NET, ReducedLeadModel, SqueezeExcitation

from ..errors import CompileError

log = logging.getLogger(__name__)

CALIBRATION_RECORDS = range(0, 25)  # CPSC2019 sample records that set the scales
HELD_OUT_RECORDS = range(25, 50)  # records that judge accuracy, never seen by calibration
METHODS = ("max", "percentile")
ACC_LIMIT = 2**31  # int32 accumulators
INT8 = (-128, 127)
UINT8 = (0, 255)
RANGES = {"int8": INT8, "uint8": UINT8, "int16": (-32768, 32767)}
INPUT_DTYPES = ("int16", "int8")


# --------------------------------------------------------------------------------------
# The quantized model (plain data: integer arrays and a few float scales)


@dataclass(frozen=True)
class Requant:
    """y = clip((A * multiplier + rounding) >> shift, lo, hi), A = max(acc, 0) if relu."""

    multiplier: np.ndarray  # int64 (channels,), values within int32
    shift: np.ndarray  # int64 (channels,), 1..62
    rounding: np.ndarray  # int64 (channels,): 2^(shift-1) + the offset in output units
    relu: bool
    lo: int
    hi: int


@dataclass(frozen=True)
class QConv:
    """One conv1d (or a linear layer: kernel 1) with int8 weights and its requantization."""

    name: str  # the fp32 module's path
    weight: np.ndarray  # int8 (out, in / groups, kernel)
    bias: np.ndarray  # int32 (out,)
    weight_scale: np.ndarray  # float64 (out,)
    dilation: int
    groups: int
    in_dtype: str  # "int8" or "uint8"
    requant: Requant | None  # None: the last linear, its int32 accumulator is the output
    out_dtype: str  # "int8", "uint8" or "int32"
    out_scale: float | np.ndarray  # per tensor, or per channel for the int32 output

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2])

    @property
    def pad(self) -> int:
        return self.dilation * (self.kernel - 1) // 2


@dataclass(frozen=True)
class QBlock:
    convs: tuple[QConv, ...]
    pool: int  # max-pool size and stride


@dataclass(frozen=True)
class QLinear:
    """A head layer: a kernel-1 QConv, then (except the last) an activation table."""

    conv: QConv
    lut: np.ndarray | None  # int8 (256,), indexed by q + 128


@dataclass(frozen=True)
class QSqueeze:
    """Squeeze-excitation in integers: the int8 mean over frames (scale `mean_scale`) and
    its MLP, whose last table is the sigmoid, to uint8 in units of 1/255."""

    mean_scale: float
    mlp: tuple[QLinear, ...]


@dataclass(frozen=True)
class QPool:
    """ECG_CRNN's global pooling over frames (after SE's channel scaling): int8, `scale`."""

    mode: str  # "max" or "avg"
    scale: float


@dataclass(frozen=True)
class LeadMap:
    """A reduced-lead variant of a lead-wise whole model (`reduce_leads`): the kept leads'
    features, and the dropped leads' constants taken from the full model on zeros."""

    full: QuantizedModel
    leads: tuple[int, ...]  # kept leads, as indices into the full model's
    positions: np.ndarray  # int32 (full channels,): index into the kept features, -1: dropped
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # by input length


@dataclass(frozen=True)
class QuantizedModel:
    """What `run_int8` and `compile.int8.kernels` compute: int8 weights, integer requantization,
    float only in `input_inv_scale` and the output scales."""

    preset: str | None
    task: str  # "features" (a backbone) or "qrs_detection"
    in_channels: int
    input_dtype: str  # "int16" (default: see quantize_model) or "int8"
    input_inv_scale: np.float32
    branches: tuple[tuple[QBlock, ...], ...]
    features_scale: float  # the concatenated backbone output
    head: tuple[QLinear, ...]  # empty for a backbone
    calibration: dict  # method, records, what it saw
    squeeze: QSqueeze | None = None  # a classifier's squeeze-excitation
    pool: QPool | None = None  # a classifier's global pooling
    lead_map: LeadMap | None = None  # a reduced-lead classifier

    @property
    def input_scale(self) -> float:
        return 1.0 / float(self.input_inv_scale)

    @property
    def output_scale(self) -> np.ndarray:
        """float32 per output channel: what multiplies the integer output."""
        if not self.head:
            return np.float32(self.features_scale)
        return np.asarray(self.head[-1].conv.out_scale, dtype=np.float32)

    def layers(self) -> list[QConv]:
        convs = [c for branch in self.branches for block in branch for c in block.convs]
        return convs + [lin.conv for lin in (*self.tables(), *self.head)]

    def tables(self) -> tuple[QLinear, ...]:
        """The squeeze-excitation's layers (they come before the head)."""
        return self.squeeze.mlp if self.squeeze is not None else ()

    def weight_bytes(self) -> tuple[int, int]:
        """(int8 weight bytes, the same weights' fp32 bytes)."""
        n = sum(c.weight.size for c in self.layers())
        return n, 4 * n

    def constant_bytes(self) -> int:
        """Everything a device stores: weights, biases, requantization, tables."""
        total = 0
        for c in self.layers():
            total += c.weight.nbytes + c.bias.nbytes
            if c.requant is not None:  # multiplier and shift fit int32, rounding int64
                total += c.requant.multiplier.size * (4 + 4 + 8)
        layers = (*self.tables(), *self.head)
        return total + sum(lin.lut.nbytes for lin in layers if lin.lut is not None)


# --------------------------------------------------------------------------------------
# Fixed-point helpers


def quantize_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) per channel with m * 2^-s == real to 31 significant bits, |m| < 2^31,
    1 <= s <= 62 (tiny multipliers lose precision, zero gives m = 0)."""
    real = np.asarray(real, dtype=np.float64)
    mant, exp = np.frexp(real)  # real = mant * 2^exp, |mant| in [0.5, 1)
    m = np.rint(mant * 2.0**31).astype(np.int64)
    carry = np.abs(m) == 2**31
    m = np.where(carry, m // 2, m)
    exp = exp + carry
    s = 31 - exp.astype(np.int64)
    if (s < 1).any():
        raise CompileError(
            f"requantization multiplier {float(np.abs(real).max()):g} is too "
            "large for an int32 multiplier and a shift >= 1; the calibration "
            "scales are degenerate (an all-zero calibration set?)"
        )
    small = s > 62  # shift too far: scale the multiplier down instead
    m = np.where(small, np.rint(real * 2.0**62).astype(np.int64), m)
    return m, np.minimum(s, 62)


def make_requant(real: np.ndarray, offset: np.ndarray, relu: bool, lo: int, hi: int) -> Requant:
    """The per-channel requantization y = round(A * real + offset), clipped."""
    m, s = quantize_multiplier(real)
    # Keep |offset| * 2^s below 2^60, so that A * m + r stays inside int64 (|A * m| < 2^62).
    offset = np.asarray(offset, dtype=np.float64)
    excess = np.maximum(0, np.ceil(np.log2(np.abs(offset) + 1)).astype(np.int64) + s - 60)
    if (s - excess < 1).any():
        raise CompileError(
            "requantization offset too large for its multiplier (a BatchNorm "
            "shift far beyond the calibrated range); recalibrate"
        )
    m, s = np.rint(m / 2.0**excess).astype(np.int64), s - excess
    rounding = (np.int64(1) << (s - 1)) + np.rint(np.asarray(offset) * 2.0**s).astype(np.int64)
    return Requant(m, s, rounding, relu, lo, hi)


def requantize(acc: np.ndarray, rq: Requant, axis: int = 0) -> np.ndarray:
    """The requantization of the module docstring; `axis` is the channel axis of `acc`."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    a = acc.astype(np.int64)
    if rq.relu:
        a = np.maximum(a, 0)
    y = (a * rq.multiplier.reshape(shape) + rq.rounding.reshape(shape)) >> rq.shift.reshape(shape)
    return np.clip(y, rq.lo, rq.hi)


def quantize_input(x: np.ndarray, inv_scale: np.float32, dtype: str = "int16") -> np.ndarray:
    """The model input as integers: clip(rint(float32(x) * inv_scale), lo, hi) of `dtype`."""
    scaled = np.asarray(x, dtype=np.float32) * np.float32(inv_scale)
    return np.clip(np.rint(scaled), *RANGES[dtype]).astype(dtype)


def _per_channel_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (axis 0): (w_q, scale)."""
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    wq = np.clip(np.rint(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127)
    return wq.astype(np.int8), scale


def _tensor_scale(amax: float, dtype: str) -> float:
    top = float(RANGES[dtype][1])
    return float(amax) / top if amax > 0 else 1.0


# --------------------------------------------------------------------------------------
# The fp32 model, read as folded float layers


@dataclass(frozen=True)
class _FloatConv:
    name: str  # module path of the ConvBnActivation
    weight: np.ndarray  # float64 (out, in / groups, kernel), conv-level norm folded in
    bias: np.ndarray  # float64 (out,)
    dilation: int
    groups: int
    post: tuple[np.ndarray, np.ndarray] | None  # the block's BatchNorm after the ReLU


def _backbone_of(model: nn.Module) -> tuple[mscnn.MultiScopicCNN, str]:
    """The MultiScopicCNN and its module prefix; what int8 cannot take is refused here."""
    spec = getattr(model, "spec", None)
    if getattr(spec, "rnn", None) is not None or getattr(spec, "attention", None) is not None:
        layer = "rnn" if spec.rnn is not None else "attn"
        raise CompileError(
            f"int8: {layer} {model.config[layer]['name']!r} has no integer form here "
            "(only the CNN, SE and the classifier); build this model in fp32"
        )
    if isinstance(model, mscnn.MultiScopicCNN):
        cnn, prefix = model, ""
    elif isinstance(model, ECG_SEQ_LAB_NET) and model.spec.se is None:
        if model.spec.recover_length:
            raise CompileError(
                "int8: recover_length interpolates the logits in float; "
                "quantize the model without it (cpsc2019_qrs has none)"
            )
        cnn, prefix = model.cnn, "cnn."
    elif isinstance(model, ECG_CRNN):
        if model.spec.pool_size != 1:
            raise CompileError(
                f"int8: global_pool_size {model.spec.pool_size}; only 1 (one value per channel)"
            )
        cnn, prefix = model.cnn, "cnn."
    elif isinstance(model, ReducedLeadModel):
        raise CompileError(
            "int8: quantize the full model, then take its lead variant with "
            "quantize.reduce_leads (the dropped leads' constants come from the full model)"
        )
    else:
        raise CompileError(
            f"int8: {type(model).__name__} is not supported yet; quantize a MultiScopicCNN "
            "backbone, an ECG_SEQ_LAB_NET without attention or an ECG_CRNN (presets "
            "cpsc2019, multi_scopic, multi_scopic_leadwise and their lead variants, "
            "cpsc2019_qrs, leadwise_classifier)"
        )
    block = cnn.spec.block
    if block["subsample_mode"] != "max":
        raise CompileError(
            f"int8: subsample_mode {block['subsample_mode']!r}; only 'max' "
            "pooling is exact on integers"
        )
    if str(block["activation"]).lower() != "relu":
        raise CompileError(
            f"int8: backbone activation {block['activation']!r}; only relu "
            "(its outputs are stored as uint8)"
        )
    if block["batch_norm"] not in (False, None, True, "batch_norm"):
        raise CompileError(
            f"int8: conv norm {block['batch_norm']!r}; only batch_norm folds into the conv weights"
        )
    return cnn, prefix


def check_quantizable(model: nn.Module) -> None:
    """A CompileError naming what int8 cannot take in `model`, before anything is built."""
    _backbone_of(model)


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = a * x + b per channel (float64)."""
    var = bn.running_var.double().numpy()
    a = 1.0 / np.sqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach().double().numpy()
    b = -bn.running_mean.double().numpy() * a
    if bn.bias is not None:
        b = b + bn.bias.detach().double().numpy()
    return a, b


def float_blocks(cnn: mscnn.MultiScopicCNN, prefix: str) -> list[list[tuple]]:
    """Per branch, per block: (list of _FloatConv, pool size, block module path)."""
    branches = []
    for b, branch in enumerate(cnn.branches.values()):
        blocks = []
        for k, block in enumerate(branch.children()):
            path = f"{prefix}branches.branch_{b}.block_{k}"
            cas = [m for n, m in block.named_children() if n.startswith("ca_")]
            convs = []
            for c, ca in enumerate(cas):
                conv = ca.conv1d
                if conv.kernel_size[0] % 2 == 0:
                    raise CompileError(
                        f"int8: {path}.ca_{c} has an even kernel "
                        f"({conv.kernel_size[0]}); only odd kernels"
                    )
                w = conv.weight.detach().double().numpy()
                bias = (
                    conv.bias.detach().double().numpy()
                    if conv.bias is not None
                    else np.zeros(w.shape[0])
                )
                if hasattr(ca, "batch_norm"):
                    a, b0 = _bn_affine(ca.batch_norm)
                    w, bias = w * a[:, None, None], bias * a + b0
                post = _bn_affine(block.bn) if c == len(cas) - 1 else None
                convs.append(
                    _FloatConv(f"{path}.ca_{c}", w, bias, conv.dilation[0], conv.groups, post)
                )
            blocks.append((convs, block.spec.subsample, path))
        branches.append(blocks)
    return branches


# --------------------------------------------------------------------------------------
# Calibration


class _Ranges:
    """Magnitudes of the fp32 activations per tensor: the max, and the top values needed
    for a percentile (kept across batches, exact)."""

    def __init__(self, percentile: float | None, n_records: int) -> None:
        self.percentile, self.n_records = percentile, n_records
        self.amax: dict[str, float] = {}
        self.top: dict[str, np.ndarray] = {}
        self.size: dict[str, int] = {}

    def add(self, key: str, t: torch.Tensor) -> None:
        # The activations' own float32 values: order statistics need no wider type, and
        # torch.topk is many times faster than numpy's partition on tens of millions.
        a = t.detach().abs().float().flatten()
        self.amax[key] = max(self.amax.get(key, 0.0), float(a.max()) if a.numel() else 0.0)
        self.size[key] = self.size.get(key, 0) + a.numel()
        if self.percentile is not None:
            per_record = a.numel() // max(1, t.shape[0])
            k = math.ceil((1 - self.percentile / 100) * per_record * self.n_records) + 1
            kept = torch.cat((torch.from_numpy(self.top.get(key, np.zeros(0, np.float32))), a))
            if len(kept) > k:
                kept = torch.topk(kept, k, sorted=False).values
            self.top[key] = kept.numpy()

    def value(self, key: str) -> float:
        if self.percentile is None:
            return self.amax[key]
        rank = (1 - self.percentile / 100) * self.size[key]  # values above the percentile
        top = np.sort(self.top[key])[::-1]
        return float(top[min(int(rank), len(top) - 1)])


POOLS = ("attn.avg_pool", "pool")  # SE's squeeze and ECG_CRNN's global pooling


def _calibrate(model: nn.Module, x: np.ndarray, ranges: _Ranges, batch: int = 5) -> None:
    """Run the fp32 model on the calibration set, recording every tensor int8 will hold."""
    hooks = []
    names = dict(model.named_modules())

    def record(key):
        return lambda _m, _i, out: ranges.add(key, out)

    for name, module in names.items():
        last = name.rsplit(".", 1)[-1]
        if last.startswith(("ca_", "lin_", "act_")) or last == "bn" or name in POOLS:
            hooks.append(module.register_forward_hook(record(name)))
    if isinstance(model, ECG_CRNN):  # the features' maxima over frames (_features_range)
        hooks.append(
            model.cnn.register_forward_hook(
                lambda _m, _i, out: ranges.add("features.max", out.amax(-1))
            )
        )
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                chunk = torch.from_numpy(np.array(x[i : i + batch]))  # a copy: x may be read-only
                ranges.add("input", chunk)
                model(chunk)
    finally:
        for h in hooks:
            h.remove()


# One process builds the same model's int8 for several targets (`make build`, the
# tests' fixtures): its quantization and the int8 reference's outputs do not depend on
# the target, so they are computed once. Quantizations are keyed by the model's weights
# (a digest of its state dict), reference outputs by the quantized model (dropped with
# it) and a digest of the input.
_CALIBRATED: dict[tuple, tuple[QuantizedModel, np.ndarray]] = {}
_CALIBRATED_KEPT = 8
_OUTPUTS: dict[int, dict] = {}
_OUTPUTS_KEPT = 512  # per quantized model


def _digest(*arrays: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()


def _weights_digest(model: nn.Module) -> bytes:
    state = model.state_dict()
    h = hashlib.blake2b(type(model).__qualname__.encode(), digest_size=16)
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(_digest(tensor.detach().cpu().numpy()))
    return h.digest()


def _memo(qm: QuantizedModel) -> dict:
    """The reference's memo of one quantized model: emptied when the model is collected."""
    key = id(qm)
    if key not in _OUTPUTS:
        _OUTPUTS[key] = {}
        weakref.finalize(qm, _OUTPUTS.pop, key, None)
    memo = _OUTPUTS[key]
    if len(memo) > _OUTPUTS_KEPT:
        memo.clear()
    return memo


def calibrated(
    model: nn.Module, leads: Sequence[str], preset: str | None = None
) -> tuple[QuantizedModel, np.ndarray]:
    """`model` quantized on the calibration records (CALIBRATION_RECORDS) of `leads`, and
    that calibration set: the one calibration every int8 build (bundles, Cortex-M) uses.
    Computed once per process for the same weights, leads and preset (the calibration
    array is shared: read it, do not write it)."""
    key = (_weights_digest(model), tuple(leads), preset)
    if key not in _CALIBRATED:
        records = CALIBRATION_RECORDS
        calibration = real_ecg(leads, records)
        calibration.flags.writeable = False
        qm = quantize_model(model, calibration, preset=preset, record_ids=records)
        while len(_CALIBRATED) >= _CALIBRATED_KEPT:
            del _CALIBRATED[next(iter(_CALIBRATED))]
        _CALIBRATED[key] = qm, calibration
    return _CALIBRATED[key]


def check_calibration(x: object, in_channels: int, what: str = "calibration set") -> np.ndarray:
    """The calibration signals as float32 (records, leads, samples), or a CompileError."""
    if not isinstance(x, np.ndarray):
        raise CompileError(
            f"{what}: expected a numpy array (records, {in_channels} leads, "
            f"samples), got {type(x).__name__}"
        )
    if x.ndim != 3 or x.shape[1] != in_channels:
        raise CompileError(
            f"{what}: shape {x.shape}, expected (records, {in_channels} leads, samples)"
        )
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise CompileError(
            f"{what} is empty (shape {x.shape}); give at least one record of real ECG"
        )
    if x.dtype.kind != "f":
        raise CompileError(f"{what}: dtype {x.dtype}, expected float signals in mV")
    if not np.isfinite(x).all():
        r, lead, s = np.argwhere(~np.isfinite(x))[0]
        raise CompileError(
            f"{what} holds NaN or Inf (first at record {r}, lead {lead}, "
            f"sample {s}); clean or drop that record"
        )
    if not np.abs(x).max() > 0:
        raise CompileError(f"{what} is all zeros: it cannot set the input scale")
    return x.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------
# Quantization


def _check_options(method: str, percentile: float, input_dtype: str) -> None:
    if method not in METHODS:
        raise CompileError(f"calibration method {method!r}; choose from: {', '.join(METHODS)}")
    if input_dtype not in INPUT_DTYPES:
        raise CompileError(f"input dtype {input_dtype!r}; choose from: {', '.join(INPUT_DTYPES)}")
    if method == "percentile" and not 50.0 < percentile < 100.0:
        raise CompileError(f"percentile {percentile!r}: expected a value in (50, 100)")


def quantize_model(
    model: nn.Module | mscnn.LoadedModel,
    calibration: np.ndarray,
    method: str = "percentile",
    percentile: float = 99.9,
    input_dtype: str = "int16",
    preset: str | None = None,
    record_ids: Sequence[int] = (),
) -> QuantizedModel:
    """Post-training int8 quantization of `model`, calibrated on `calibration`
    (records, leads, samples) of real ECG in mV (module docstring: the arithmetic).

    `method` "percentile" takes the `percentile`-th percentile of each tensor's fp32
    magnitudes as its range (larger values saturate), "max" the largest.

    `input_dtype` "int16" keeps the input (and so the first conv of every branch) in 16
    bits: the detector takes raw mV, and real records differ 30x in amplitude (0.3 mV to
    artefacts at 33 mV), so an int8 input scale set by the large ones leaves the small
    ones a few levels. Measured on the held-out CPSC2019 records (fake-quantizing one
    tensor at a time), the int8 input alone costs more accuracy than every other tensor
    together: with it the detector's score drops 0.896 -> 0.884 and the logits' median
    per-record normalised error is 0.13; with int16, 0.896 (as fp32) and 0.05. The
    input's range is its maximum magnitude, whatever `method` says: 16 bits need no
    clipping. `record_ids` (which records `calibration` holds) travels with the model, so
    that judging it on them is refused."""
    if isinstance(model, mscnn.LoadedModel):
        model, preset = model.model, preset or model.preset
    _check_options(method, percentile, input_dtype)
    cnn, prefix = _backbone_of(model)
    x = check_calibration(calibration, cnn.in_channels)
    cnn.compute_output_shape(x.shape[2])  # too short a record is refused by the model
    model.eval()
    ranges = _Ranges(percentile if method == "percentile" else None, len(x))
    _calibrate(model, x, ranges)
    amax_in = ranges.amax["input"] if input_dtype == "int16" else ranges.value("input")
    s_in = _tensor_scale(amax_in, input_dtype)
    float_branches = float_blocks(cnn, prefix)
    # One scale for every branch's output, so that concatenating them is a copy.
    s_feat = _tensor_scale(_features_range(ranges, float_branches, model), "int8")
    branches = tuple(
        _quantize_branch(br, s_in, input_dtype, s_feat, ranges) for br in float_branches
    )
    squeeze, pool, head = _quantize_tail(model, s_feat, ranges) if prefix else (None, None, ())
    info = {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "records": len(x),
        "samples": int(x.shape[2]),
        "record_ids": [int(i) for i in record_ids],
    }
    task = getattr(model, "task", "features")
    scale_in = np.float32(1.0 / s_in)
    qm = QuantizedModel(
        preset, task, cnn.in_channels, input_dtype, scale_in, branches, s_feat, head, info,
        squeeze, pool,
    )  # fmt: skip
    log.info(
        "int8: %d layers quantized (%s calibration on %d records)", len(qm.layers()), method, len(x)
    )
    return qm


def _quantize_tail(model: nn.Module, s_feat: float, ranges: _Ranges) -> tuple:
    """A whole model's (squeeze-excitation, global pooling, head) after the backbone."""
    squeeze = pool = None
    if isinstance(getattr(model, "attn", None), SqueezeExcitation):
        s_mean = _tensor_scale(ranges.value("attn.avg_pool"), "int8")
        sigmoid = model.attn.fc[1]
        squeeze = QSqueeze(
            s_mean, _quantize_mlp(model.attn.fc[0], "attn.fc.0", s_mean, ranges, sigmoid)
        )
    if isinstance(model, ECG_CRNN):
        pool = QPool(model.spec.pool, _tensor_scale(ranges.value("pool"), "int8"))
    s_head = pool.scale if pool is not None else s_feat
    return squeeze, pool, _quantize_mlp(model.clf, "clf", s_head, ranges)


def _features_range(ranges: _Ranges, float_branches, model: nn.Module) -> float:
    """The backbone output's range: its values' (the branches' last BatchNorms), or
    for a classifier that max-pools them, their per-channel maxima over frames: global
    max pooling keeps each channel's largest value, the very values a percentile of
    all values would clip."""
    values = max(ranges.value(f"{br[-1][2]}.bn") for br in float_branches)
    if isinstance(model, ECG_CRNN) and model.spec.pool == "max":
        return max(values, ranges.value("features.max"))
    return values


def _quantize_branch(blocks, s_in, dtype, s_feat, ranges: _Ranges) -> tuple[QBlock, ...]:
    out = []
    for b, (convs, pool, path) in enumerate(blocks):
        qconvs = []
        for fc in convs:
            if fc.post is None:  # ReLU output inside the block: uint8
                s_out = _tensor_scale(ranges.value(fc.name), "uint8")
                rq_real, offset, lo_hi, out_dtype = None, 0.0, UINT8, "uint8"
            else:  # the block's BatchNorm output: int8, the shared scale after the last block
                last = b == len(blocks) - 1
                s_out = s_feat if last else _tensor_scale(ranges.value(f"{path}.bn"), "int8")
                rq_real, offset, lo_hi, out_dtype = fc.post[0], fc.post[1] / s_out, INT8, "int8"
            qc = _quantize_conv(fc.name, fc.weight, fc.bias, s_in, dtype, fc.dilation, fc.groups)
            real = qc.weight_scale * s_in / s_out
            if rq_real is not None:
                real = real * rq_real
            rq = make_requant(real, np.broadcast_to(offset, real.shape), True, *lo_hi)
            qconvs.append(_with_requant(qc, rq, out_dtype, s_out))
            s_in, dtype = s_out, out_dtype
        out.append(QBlock(tuple(qconvs), pool))
    return tuple(out)


def _quantize_conv(name, w, b, s_in, in_dtype, dilation=1, groups=1) -> QConv:
    """int8 weights and int32 bias, with the int32 accumulator bound checked."""
    wq, sw = _per_channel_weights(w)
    bq = np.rint(b / (s_in * sw))
    # Worst case over any input (255 covers uint8 and the +128 form VNNI kernels feed).
    top = 32768 if in_dtype == "int16" else 255
    worst = np.abs(wq.astype(np.int64)).reshape(len(wq), -1).sum(1) * top + np.abs(bq)
    if worst.max() >= ACC_LIMIT:
        raise CompileError(
            f"int8: layer {name} could overflow its int32 accumulator "
            f"(bound {int(worst.max())}); its bias is too large for its "
            "input scale"
        )
    return QConv(
        name, wq, bq.astype(np.int32), sw, dilation, groups, in_dtype, None, "int32", s_in * sw
    )


def _with_requant(qc: QConv, rq: Requant | None, out_dtype: str, out_scale) -> QConv:
    return QConv(
        qc.name,
        qc.weight,
        qc.bias,
        qc.weight_scale,
        qc.dilation,
        qc.groups,
        qc.in_dtype,
        rq,
        out_dtype,
        out_scale,
    )


def _quantize_mlp(
    mlp: nn.Module, prefix: str, s_in: float, ranges: _Ranges, final: nn.Module | None = None
) -> tuple[QLinear, ...]:
    """An MLP (the head, or SE's): linear -> int8 -> activation table; the last layer's
    int32 accumulator is the output, or with `final` (SE's sigmoid) a table to uint8 in
    units of 1/255."""
    linears = [(n, m) for n, m in mlp.named_children() if n.startswith("lin_")]
    acts = dict(mlp.named_children())
    out = []
    for i, (name, lin) in enumerate(linears):
        w = lin.weight.detach().double().numpy()[:, :, None]
        b = lin.bias.detach().double().numpy() if lin.bias is not None else np.zeros(len(w))
        qc = _quantize_conv(f"{prefix}.{name}", w, b, s_in, "int8")
        last = i == len(linears) - 1
        if last and final is None:
            out.append(QLinear(qc, None))
            break
        s_pre = _tensor_scale(ranges.value(f"{prefix}.{name}"), "int8")
        rq = make_requant(qc.weight_scale * s_in / s_pre, np.zeros(len(w)), False, *INT8)
        if last:  # SE's sigmoid: (0, 1) as uint8 in units of 1/255
            act, s_post, dtype = final, 1 / 255, "uint8"
        else:
            act, dtype = acts[f"act_{i}"], "int8"
            s_post = _tensor_scale(ranges.value(f"{prefix}.act_{i}"), "int8")
        grid = torch.arange(-128, 128, dtype=torch.float64) * s_pre
        with torch.no_grad():
            values = act(grid.clone()).numpy()
        lut = np.clip(np.rint(values / s_post), *RANGES[dtype]).astype(dtype)
        out.append(QLinear(_with_requant(qc, rq, "int8", s_pre), lut))
        s_in = s_post
    return tuple(out)


# --------------------------------------------------------------------------------------
# The int8 reference


@dataclass(frozen=True)
class LayerSaturation:
    """How often a tensor's values fell outside its integer range and were clipped."""

    name: str
    clipped: int
    total: int

    @property
    def fraction(self) -> float:
        return self.clipped / self.total if self.total else 0.0


def conv_accumulate(x: np.ndarray, conv: QConv) -> np.ndarray:
    """int32 accumulators (batch, out, time) of a "same"-padded dilated grouped conv1d on
    integer `x` (batch, in, time). The products and sums are integers below 2^31 (the
    quantization bounds every accumulator), so float64 holds each partial sum exactly,
    in any order: a float64 matmul (BLAS, many times numpy's integer matmul) gives the
    integer result."""
    b, _, t = x.shape
    f, cg, k = conv.weight.shape
    g, d, p = conv.groups, conv.dilation, conv.pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p)))
    cols = np.stack([xp[:, :, i * d : i * d + t] for i in range(k)], axis=2)  # (b, c, k, t)
    cols = cols.reshape(b, g, cg * k, t)
    w = conv.weight.astype(np.float64).reshape(g, f // g, cg * k)
    acc = np.matmul(w[None], cols).astype(np.int64).astype(np.int32)  # (b, g, f / g, t)
    return acc.reshape(b, f, t) + conv.bias.astype(np.int32)[:, None]


def _requant_counted(acc, rq: Requant, axis: int, name: str, seen: list | None) -> np.ndarray:
    if seen is not None:
        wide = requantize(
            acc, Requant(rq.multiplier, rq.shift, rq.rounding, rq.relu, -(2**62), 2**62), axis
        )
        seen.append(LayerSaturation(name, int(((wide < rq.lo) | (wide > rq.hi)).sum()), wide.size))
    return requantize(acc, rq, axis).astype(np.int32)


def run_int8(qm: QuantizedModel, x: np.ndarray, seen: list | None = None) -> np.ndarray:
    """The quantized model on float32 `x` (batch, leads, samples): integers only between
    the input quantization and the output scale. A backbone gives (batch, channels,
    frames), the detector (batch, frames, classes) logits, a classifier (batch, classes).
    `seen`, if a list, is given each layer's LayerSaturation."""
    x = check_calibration(x, qm.in_channels, "input")
    if seen is None:  # the same input again (another target's build): the same integers
        memo, key = _memo(qm), _digest(x)
        if key not in memo:
            memo[key] = _run_int8(qm, x, None)
        return memo[key].copy()
    return _run_int8(qm, x, seen)


def _run_int8(qm: QuantizedModel, x: np.ndarray, seen: list | None) -> np.ndarray:
    if seen is not None:
        wide = np.rint(x.astype(np.float32) * qm.input_inv_scale)
        lo, hi = RANGES[qm.input_dtype]
        seen.append(LayerSaturation("input", int(((wide < lo) | (wide > hi)).sum()), wide.size))
    q = quantize_input(x, qm.input_inv_scale, qm.input_dtype).astype(np.int32)
    h = int8_features(qm, q, seen)  # (batch, channels, frames), one scale
    if qm.pool is not None:
        return _classify(qm, h, x.shape[2], seen)
    if not qm.head:
        return h.astype(np.float32) * np.float32(qm.features_scale)
    return run_mlp(qm.head, h.transpose(0, 2, 1), seen)  # the MLP runs per frame


def int8_features(qm: QuantizedModel, q: np.ndarray, seen: list | None = None) -> np.ndarray:
    """The backbone on the quantized input `q`: the branches' concatenated int8 features
    (batch, channels, frames), as int32 values."""
    features = []
    for branch in qm.branches:
        h = q
        for block in branch:
            for conv in block.convs:
                h = _requant_counted(conv_accumulate(h, conv), conv.requant, 1, conv.name, seen)
            t = h.shape[2] // block.pool * block.pool
            h = h[:, :, :t].reshape(h.shape[0], h.shape[1], -1, block.pool).max(-1)
        features.append(h)
    return np.concatenate(features, axis=1)


def run_mlp(layers: Sequence[QLinear], h: np.ndarray, seen: list | None) -> np.ndarray:
    """Linear layers over the last axis of `h`: the integers the last table gives, or
    the float32 output of a last layer without requantization."""
    for lin in layers:
        w = lin.conv.weight[:, :, 0].astype(np.int32)
        acc = h @ w.T + lin.conv.bias.astype(np.int32)
        if lin.conv.requant is None:
            return acc.astype(np.float32) * np.asarray(lin.conv.out_scale, dtype=np.float32)
        h = _requant_counted(acc, lin.conv.requant, -1, lin.conv.name, seen)
        if lin.lut is not None:
            h = lin.lut[h + 128].astype(np.int32)
    return h


def _classify(qm: QuantizedModel, h: np.ndarray, samples: int, seen: list | None) -> np.ndarray:
    """ECG_CRNN's tail on the features `h` (batch, channels, frames). SE's excitation e
    (uint8, > 0) scales a channel by a positive factor, so max over frames of h * e is
    e * max(h) (and the sum alike): the pooled value is multiplied, then requantized."""
    frames = h.shape[2]
    sums = h.sum(2, dtype=np.int64)
    pooled = h.max(2).astype(np.int64) if qm.pool.mode == "max" else sums
    if qm.lead_map is not None:  # the dropped leads' channels are constants
        pos = qm.lead_map.positions
        d_sums, d_pooled = dropped_constants(qm, samples)
        sums = np.where(pos >= 0, sums[:, np.maximum(pos, 0)], d_sums)
        pooled = np.where(pos >= 0, pooled[:, np.maximum(pos, 0)], d_pooled)
    if qm.squeeze is not None:
        mean = _requant_counted(sums, squeeze_requant(qm, frames), 1, "attn.avg_pool", seen)
        pooled = pooled * run_mlp(qm.squeeze.mlp, mean, seen)
    z = _requant_counted(pooled, pool_requant(qm, frames), 1, "pool", seen)
    return run_mlp(qm.head, z, seen)


def squeeze_requant(qm: QuantizedModel, frames: int) -> Requant:
    """SE's mean over `frames`: the int32 sum of the features requantized to int8."""
    real = qm.features_scale / (frames * qm.squeeze.mean_scale)
    return make_requant(np.array([real]), np.zeros(1), False, *INT8)


def pool_requant(qm: QuantizedModel, frames: int) -> Requant:
    """The global pooling's output: max (or sum) of the features, times SE's excitation
    (units of 1/255) if any, requantized to int8. The product must fit int32."""
    real = qm.features_scale / qm.pool.scale
    bound = 128
    if qm.squeeze is not None:
        real, bound = real / 255, bound * 255
    if qm.pool.mode == "avg":
        real, bound = real / frames, bound * frames
    if bound >= ACC_LIMIT:
        raise CompileError(
            f"int8: average pooling over {frames} frames could overflow int32; "
            "classify shorter windows"
        )
    return make_requant(np.array([real]), np.zeros(1), False, *INT8)


# --------------------------------------------------------------------------------------
# Reduced-lead variants of a quantized lead-wise model


def reduce_leads(qm: QuantizedModel, leads: Sequence[int]) -> QuantizedModel:
    """The variant of `qm` (a lead-wise model quantized with all its leads) that takes
    only `leads`: run_int8(variant, x[:, leads]) equals run_int8(qm, x with the other leads
    zero) bit for bit. The kept leads' convs are the full model's channels (per-channel
    weights and requantization, per-tensor scales); a classifier's dropped channels are
    constants per input length (`dropped_constants`)."""
    leads = tuple(int(i) for i in leads)
    if leads == tuple(range(qm.in_channels)):
        return qm
    memo = _memo(qm)  # one variant object per leads, so its reference outputs are shared
    if ("reduced", leads) not in memo:
        memo["reduced", leads] = _reduce_leads(qm, leads)
    return memo["reduced", leads]


def _reduce_leads(qm: QuantizedModel, leads: tuple[int, ...]) -> QuantizedModel:
    if qm.lead_map is not None:
        raise CompileError("int8: reduce the full model's leads, not a variant's")
    if (
        len(set(leads)) != len(leads)
        or not leads
        or not 0 <= min(leads) <= max(leads) < qm.in_channels
    ):
        raise CompileError(
            f"int8: leads {list(leads)}: expected distinct indices below {qm.in_channels}"
        )
    branches = _lead_branches(qm, leads)
    if qm.pool is None and qm.head:
        raise CompileError("int8: reduced-lead detectors are not supported (no preset has one)")
    reduced = replace(qm, in_channels=len(leads), branches=branches)
    if qm.pool is None:
        return reduced
    positions = np.full(sum(_widths(qm)), -1, dtype=np.int32)
    kept = lead_channels(qm, leads)
    positions[kept] = np.arange(len(kept), dtype=np.int32)
    return replace(reduced, lead_map=LeadMap(qm, leads, positions))


def _widths(qm: QuantizedModel) -> list[int]:
    return [int(branch[-1].convs[-1].weight.shape[0]) for branch in qm.branches]


def lead_channels(qm: QuantizedModel, leads: Sequence[int]) -> list[int]:
    """The feature channels of a lead-wise model that belong to `leads`, in the order a
    reduced model computes them (branch by branch, lead by lead)."""
    channels, offset = [], 0
    for width in _widths(qm):
        units = width // qm.in_channels
        channels += [offset + lead * units + j for lead in leads for j in range(units)]
        offset += width
    return channels


def _lead_branches(qm: QuantizedModel, leads: tuple[int, ...]) -> tuple:
    n = qm.in_channels
    for conv in (c for branch in qm.branches for block in branch for c in block.convs):
        if conv.groups != n:
            raise CompileError(
                f"int8: {conv.name} has {conv.groups} groups for {n} leads: the model is "
                "not lead-wise, so its leads cannot be dropped exactly"
            )

    def cut(conv: QConv) -> QConv:
        units = conv.weight.shape[0] // n
        idx = np.array([lead * units + j for lead in leads for j in range(units)])
        rq = conv.requant
        sub = Requant(rq.multiplier[idx], rq.shift[idx], rq.rounding[idx], rq.relu, rq.lo, rq.hi)
        return replace(
            conv, weight=conv.weight[idx], bias=conv.bias[idx],
            weight_scale=conv.weight_scale[idx], groups=len(leads), requant=sub,
        )  # fmt: skip

    return tuple(
        tuple(QBlock(tuple(cut(c) for c in block.convs), block.pool) for block in branch)
        for branch in qm.branches
    )


def dropped_constants(qm: QuantizedModel, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums, pooled) int64 (full channels,) of the dropped leads' features over an
    input of `samples` (zero where a lead is kept): the full model's features of zero
    leads, which depend on the length only (zero padding reaches the edges)."""
    lm = qm.lead_map
    if samples not in lm.cache:
        dropped = tuple(i for i in range(lm.full.in_channels) if i not in lm.leads)
        zeros = np.zeros((1, len(dropped), samples), dtype=np.int32)
        backbone = replace(
            lm.full, in_channels=len(dropped), branches=_lead_branches(lm.full, dropped)
        )
        z = int8_features(backbone, zeros)[0]
        sums, pooled = np.zeros((2, len(lm.positions)), dtype=np.int64)
        idx = lead_channels(lm.full, dropped)
        sums[idx] = z.sum(1)
        pooled[idx] = z.max(1) if qm.pool.mode == "max" else z.sum(1)
        lm.cache.clear()  # the latest length only
        lm.cache[samples] = sums, pooled
    return lm.cache[samples]


def saturation(qm: QuantizedModel, x: np.ndarray) -> list[LayerSaturation]:
    """Per layer, how many values the int8 model clips on `x`: calibration that fits the
    data clips few or none; a layer that clips much is where precision is lost."""
    memo, key = _memo(qm), ("saturation", _digest(x))
    if key not in memo:
        seen: list[LayerSaturation] = []
        run_int8(qm, x, seen)
        memo[key] = tuple(seen)
    merged: dict[str, LayerSaturation] = {}
    for s in memo[key]:
        old = merged.get(s.name, LayerSaturation(s.name, 0, 0))
        merged[s.name] = LayerSaturation(s.name, old.clipped + s.clipped, old.total + s.total)
    for s in merged.values():
        if s.clipped:
            log.info(
                "int8 saturation: %s clips %d of %d values (%.3g%%)",
                s.name,
                s.clipped,
                s.total,
                100 * s.fraction,
            )
    return list(merged.values())


# --------------------------------------------------------------------------------------
# Real ECG for calibration and judging


def real_ecg(leads: Sequence[str], records: Sequence[int]) -> np.ndarray:
    """float32 (records, leads, 5000) in mV from ../shared/data: CPSC2019 for the 1-lead
    models (lead "ECG"), CinC 2021 for the others, by lead name."""
    from mscnn import data as ecg_data

    records = list(records)
    try:
        if tuple(leads) == ("ECG",):
            return ecg_data.cpsc2019_records().signals[records][:, None, :]
        cinc = ecg_data.cinc2021_records()
        index = [cinc.leads.index(lead) for lead in leads]
        return np.ascontiguousarray(cinc.signals[records][:, index, :])
    except mscnn.MscnnError as exc:
        raise CompileError(f"int8 calibration data: {exc}") from None
    except (ValueError, IndexError) as exc:
        raise CompileError(
            f"int8 calibration data: leads {list(leads)}, records {records[:3]}...: {exc}"
        ) from None


# --------------------------------------------------------------------------------------
# Accuracy against fp32 on held-out records


@dataclass(frozen=True)
class DetectorAccuracy:
    """The detector's beats, fp32 against int8, on records calibration never saw; and
    the logits' error against fp32 (reported, not judged by the fp32 tolerance)."""

    records: tuple[int, ...]
    fp32: Any  # deploy.rpeaks.RPeakScore
    int8: Any
    max_abs_error: float  # over all logits
    normalized_error: float  # max abs error / max |fp32 logit|
    relative_rms_error: float  # rms(int8 - fp32) / rms(fp32)
    sign_agreement: float  # frames on the same side of the 0.5 threshold

    @property
    def score_drop(self) -> float:
        return self.fp32.score - self.int8.score

    @property
    def f1_drop_points(self) -> float:
        return 100.0 * (self.fp32.f1 - self.int8.f1)

    def table(self) -> str:
        rows = [("fp32", self.fp32), ("int8", self.int8)]
        lines = [f"{'':6} {'score':>6} {'F1':>7} {'TP':>5} {'FP':>4} {'FN':>4}"]
        lines += [
            f"{n:6} {s.score:6.3f} {s.f1:7.4f} {s.tp:5d} {s.fp:4d} {s.fn:4d}" for n, s in rows
        ]
        lines.append(
            f"logits: max abs error {self.max_abs_error:.4g}, normalised "
            f"{self.normalized_error:.4g}, relative rms {self.relative_rms_error:.4g}, "
            f"same side of the threshold {100 * self.sign_agreement:.3f}%"
        )
        return "\n".join(lines)


def evaluate_detector(
    model: nn.Module, qm: QuantizedModel, records: Sequence[int] = HELD_OUT_RECORDS, run=None
) -> DetectorAccuracy:
    """CPSC2019 score and F1 of fp32 and int8 (`run(x)`, default the reference) on
    `records`, with the deployed R-peak rule; records overlapping the calibration set
    are refused."""
    from deploy.rpeaks import RPeakRule, detect_rpeaks, score_rpeaks
    from mscnn import data as ecg_data

    if qm.task != "qrs_detection":
        raise CompileError(f"evaluate_detector: the model's task is {qm.task!r}, not a detector")
    records = list(records)
    overlap = sorted(set(records) & set(qm.calibration.get("record_ids", ())))
    if overlap:
        raise CompileError(f"records {overlap[:5]} calibrated this model; judge it on others")
    data = ecg_data.cpsc2019_records()
    x = data.signals[records][:, None, :]
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = np.concatenate(
        [(run or (lambda v: run_int8(qm, v)))(x[i : i + 1]) for i in range(len(x))]
    )
    rule = RPeakRule(reduction=x.shape[2] // ref.shape[1], fs=data.fs)
    refs = [data.r_peaks[i] for i in records]

    def score(logits):
        return score_rpeaks(refs, [detect_rpeaks(y, rule, x.shape[2]) for y in logits], data.fs)

    err = np.abs(got - ref)
    return DetectorAccuracy(
        tuple(records),
        score(ref),
        score(got),
        float(err.max()),
        float(err.max() / np.abs(ref).max()),
        float(np.sqrt((err**2).mean() / (ref**2).mean())),
        float(((got > 0) == (ref > 0)).mean()),
    )
