"""int8 classifiers (ECG_CRNN: squeeze-excitation, global pooling): the integer tail pinned
against a direct computation, reduced-lead variants bit for bit the full int8 model on
zero-filled leads, the TVM program bit for bit the reference, the int8 logits near fp32's,
and what int8 cannot take refused by name. A small lead-wise classifier keeps it quick; the
preset's own bundles are in test_int8_bundles.py."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

import mscnn
from compile.errors import CompileError
from compile.int8 import kernels as int8
from compile.int8 import quantize
from deploy.bundle import cpu_flags, host_arch
from mscnn.checkpoint import seeded_init

CLASSES = ["a", "b", "c", "d"]
SAMPLES = 1000


def real(leads, records):
    try:
        return quantize.real_ecg(leads, records)[:, :, :SAMPLES]
    except CompileError as exc:
        pytest.skip(f"the real ECG records are not here: {exc}")


def small_classifier(attn="se", pool="max", seed=3, pool_size=1):
    """leadwise_classifier's layout with 2/4/8 filters per lead and a 32-wide head."""
    config = copy.deepcopy(dict(mscnn.PRESETS["leadwise_classifier"].config))
    config["cnn"]["multi_scopic_leadwise"]["num_filters"] = [[24, 48, 96]] * 3
    config["clf"]["out_channels"] = [32]
    config["attn"]["name"] = attn
    config["global_pool"], config["global_pool_size"] = pool, pool_size
    model = mscnn.ECG_CRNN(CLASSES, 12, config)
    seeded_init(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def leads():
    return list(mscnn.LEADS_12)


@pytest.fixture(scope="module", params=[("se", "max"), ("none", "avg")], ids=["se-max", "avg"])
def classifier(request, leads):
    model = small_classifier(*request.param)
    x = real(leads, quantize.CALIBRATION_RECORDS)
    return model, quantize.quantize_model(model, x, record_ids=quantize.CALIBRATION_RECORDS)


def held_out(leads, n=6):
    return real(leads, list(quantize.HELD_OUT_RECORDS)[:n])


def vnni_or_skip():
    if host_arch() != "x86_64" or "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI: the x86 int8 program cannot run here")


# -- the reference ---------------------------------------------------------------------


def test_the_tail_equals_a_direct_integer_computation(classifier, leads):
    """SE scales every frame of a channel before the pooling; the reference pools first
    and scales the pooled value. For max pooling and an excitation > 0 these are equal:
    computed here the long way, frame by frame."""
    _, qm = classifier
    x = held_out(leads, 2)
    q = quantize.quantize_input(x, qm.input_inv_scale, qm.input_dtype).astype(np.int32)
    h = quantize.int8_features(qm, q)  # (batch, channels, frames)
    frames = h.shape[2]
    e = np.ones(h.shape[:2], dtype=np.int64)
    if qm.squeeze is not None:
        e = quantize.requantize(h.sum(2), quantize.squeeze_requant(qm, frames), 1)
        for lin in qm.squeeze.mlp:
            acc = e @ lin.conv.weight[:, :, 0].astype(np.int64).T + lin.conv.bias
            e = lin.lut[quantize.requantize(acc, lin.conv.requant, 1) + 128].astype(np.int64)
        assert e.min() >= 0 and e.max() <= 255 and len(np.unique(e)) > 10
    scaled = h * e[:, :, None]  # every frame scaled, then pooled
    pooled = scaled.max(2) if qm.pool.mode == "max" else scaled.sum(2)
    z = quantize.requantize(pooled, quantize.pool_requant(qm, frames), 1)
    w = qm.head[0].conv.weight[:, :, 0].astype(np.int64)
    hidden = quantize.requantize(z @ w.T + qm.head[0].conv.bias, qm.head[0].conv.requant, 1)
    hidden = qm.head[0].lut[hidden + 128].astype(np.int64)
    last = qm.head[1].conv
    logits = (hidden @ last.weight[:, :, 0].astype(np.int64).T + last.bias).astype(np.float32)
    expected = logits * np.asarray(last.out_scale, dtype=np.float32)
    assert np.array_equal(quantize.run_int8(qm, x), expected)


def test_int8_logits_track_fp32_on_held_out_records(classifier, leads):
    model, qm = classifier
    x = held_out(leads)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = quantize.run_int8(qm, x)
    assert got.shape == ref.shape == (len(x), len(CLASSES))
    normalised = np.abs(got - ref).max(1) / np.abs(ref).max(1)
    assert np.median(normalised) < 0.15, normalised
    assert ((got > 0) == (ref > 0)).mean() >= 0.75


def test_saturation_reports_the_tail_layers(classifier, leads):
    _, qm = classifier
    names = {s.name for s in quantize.saturation(qm, held_out(leads, 2))}
    tail = {"pool", "clf.lin_0"}
    if qm.squeeze is not None:
        tail |= {"attn.avg_pool", "attn.fc.0.lin_0", "attn.fc.0.lin_1"}
    assert tail <= names and "clf.lin_1" not in names  # the last layer does not clip


@pytest.mark.parametrize("kept", [(0, 1), (0, 1, 7), (6, 2, 11)], ids=str)
def test_a_reduced_lead_variant_is_the_full_model_on_zero_filled_leads(classifier, leads, kept):
    _, qm = classifier
    variant = quantize.reduce_leads(qm, kept)
    x = held_out(leads, 3)
    zero_filled = np.zeros_like(x)
    zero_filled[:, list(kept)] = x[:, list(kept)]
    got = quantize.run_int8(variant, np.ascontiguousarray(x[:, list(kept)]))
    assert np.array_equal(got, quantize.run_int8(qm, zero_filled))
    assert variant.in_channels == len(kept) and variant.weight_bytes()[0] < qm.weight_bytes()[0]


def test_reducing_leads_refuses_what_it_cannot_do_exactly(classifier):
    _, qm = classifier
    with pytest.raises(CompileError, match="distinct indices below 12"):
        quantize.reduce_leads(qm, (0, 0))
    with pytest.raises(CompileError, match="reduce the full model's leads"):
        quantize.reduce_leads(quantize.reduce_leads(qm, (0, 1)), (0,))
    assert quantize.reduce_leads(qm, range(12)) is qm


# -- the TVM program -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kept", [tuple(range(12)), (0, 1, 7)], ids=["12", "3"])
def test_program_equals_the_reference_bit_for_bit(classifier, leads, kept):
    vnni_or_skip()
    _, qm = classifier
    variant = quantize.reduce_leads(qm, kept)
    program = int8.build_int8(variant, int8.X86_VNNI, batch=1, samples=SAMPLES)
    assert program.output_shape == (1, len(CLASSES))
    assert {"se_squeeze", "global_pool"} & set(program.kernels)
    x = held_out(leads, 3)[:, list(kept)]
    for i in range(len(x)):
        got = program(np.ascontiguousarray(x[i : i + 1]))
        assert np.array_equal(got, quantize.run_int8(variant, x[i : i + 1]))


@pytest.mark.slow
def test_avx2_kernels_give_the_same_classifier(classifier, leads):
    """A CPU without VNNI (AVX2's vpmaddubsw): the excitation table's uint8 output included."""
    haswell = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    if host_arch() != "x86_64" or not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("this CPU cannot run AVX2 code")
    _, qm = classifier
    program = int8.build_int8(qm, haswell, batch=1, samples=SAMPLES)
    x = held_out(leads, 1)
    assert program.isa.name == "avx2"
    assert np.array_equal(program(x), quantize.run_int8(qm, x))


# -- refusals --------------------------------------------------------------------------


def test_what_int8_cannot_take_is_refused_by_name(leads):
    x = real(leads, [0, 1])
    with pytest.raises(CompileError, match="global_pool_size 2; only 1"):
        quantize.quantize_model(small_classifier(pool_size=2), x)
    variant = mscnn.ReducedLeadModel(small_classifier(), [0, 1])
    with pytest.raises(CompileError, match="quantize the full model, then take its lead"):
        quantize.quantize_model(variant, x[:, :2])


def test_average_pooling_that_could_overflow_int32_is_refused(classifier):
    _, qm = classifier
    avg = dataclasses.replace(qm, pool=quantize.QPool("avg", qm.pool.scale))
    worst = 128 * (255 if qm.squeeze is not None else 1)  # |int8| x excitation, per frame
    frames = -(-quantize.ACC_LIMIT // worst)  # the fewest frames that could overflow
    assert quantize.pool_requant(avg, frames - 1).shift[0] >= 1
    with pytest.raises(CompileError, match=f"pooling over {frames} frames could overflow"):
        quantize.pool_requant(avg, frames)
