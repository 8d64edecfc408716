"""Whole models with torch_ecg's recurrent (`rnn` lstm / linear) and global-attention
(`attn` gc / nl) layers: strict loading of torch_ecg's state dicts, the same logits on
real ECG, refusals that name the key, streaming refused (or exact) per layer."""

import copy
import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mscnn
from mscnn import ECG_SEQ_LAB_NET, MscnnError, StreamingModel, seeded_init
from mscnn import data as ecg_data

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch_ecg's imports warn about deprecated torch APIs
    from torch_ecg.model_configs import (
        ECG_CRNN_CONFIG,
        ECG_SEQ_LAB_NET_CONFIG,
        multi_scopic_leadwise,
    )
    from torch_ecg.models import ECG_CRNN as TorchEcgCRNN
    from torch_ecg.models import ECG_SEQ_LAB_NET as TorchEcgSeqLab

HAVE_DATA = all(
    (ecg_data.data_dir() / f).is_file() for f in (ecg_data.CPSC2019_FILE, ecg_data.CINC2021_FILE)
)
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason=f"no ECG records in {ecg_data.data_dir()} (set MSCNN_DATA)"
)
CLASSES = ["a", "b"]


def small_backbone():
    """multi_scopic with few filters: the head's layers are what is under test."""
    config = copy.deepcopy(dict(mscnn.PRESETS["cpsc2019"].config))
    config["num_filters"] = [[4, 4, 8]] * 3
    return config


def seq_lab(rnn=None, attn="se", backbone=None, **changes):
    """torch_ecg's ECG_SEQ_LAB_NET_CONFIG (its defaults: BiLSTM 256/256, SE, 256-64),
    changed where asked."""
    config = copy.deepcopy(ECG_SEQ_LAB_NET_CONFIG)
    if backbone is not None:
        config.cnn.multi_scopic = backbone
    if rnn is not None:
        config.rnn.name = rnn.pop("name", "lstm")
        config.rnn.setdefault(config.rnn.name, {}).update(rnn)
    config.attn.name = attn if isinstance(attn, str) else attn.pop("name")
    if isinstance(attn, dict):
        config.attn.setdefault(config.attn.name, {}).update(attn)
    config.update(changes)
    return config


def crnn_leadwise(**lstm):
    config = copy.deepcopy(ECG_CRNN_CONFIG)
    config.cnn.name = "multi_scopic_leadwise"
    config.cnn.multi_scopic_leadwise = copy.deepcopy(multi_scopic_leadwise)
    config.rnn.name = "lstm"
    config.rnn.lstm.update(lstm)
    return config


def build_both(head, n_leads, config):
    theirs_cls = TorchEcgCRNN if head == "ECG_CRNN" else TorchEcgSeqLab
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # retseq false: attention ignored
        theirs = theirs_cls(CLASSES, n_leads, copy.deepcopy(config))
    ours = mscnn.HEADS[head](CLASSES, n_leads, copy.deepcopy(config))
    seeded_init(theirs, seed=7)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.eval(), theirs.eval()


def assert_same(ours, theirs, x):
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() / scale <= 1e-6
    assert ours.compute_output_shape(x.shape[-1], x.shape[0]) == tuple(expected.shape)


@pytest.fixture(scope="module")
def cpsc_x():
    """Two real CPSC2019 records (mV), 2 s each."""
    records = ecg_data.cpsc2019_records()
    return torch.from_numpy(np.ascontiguousarray(records.signals[[0, 9], None, :1000]))


@pytest.fixture(scope="module")
def cinc_x():
    records = ecg_data.cinc2021_records()
    return torch.from_numpy(np.ascontiguousarray(records.signals[[3, 17], :, :1000]))


# --------------------------------------------------------------------------------------
# torch_ecg's state dicts load strictly and give torch_ecg's logits on real ECG

SEQ_LAB_CASES = {
    # torch_ecg's default, unchanged: multi_scopic + BiLSTM 256/256 + SE + 256-64
    "default": {},
    "uni_lstm_3_layers_gc": {
        "rnn": {"hidden_sizes": [24, 16, 8], "bidirectional": False, "dropouts": [0.1, 0.2, 0]},
        "attn": "gc",
        "backbone": small_backbone(),
    },
    "bilstm_no_bias_nl": {
        "rnn": {"hidden_sizes": [16], "bias": False},
        "attn": {"name": "nl", "filter_lengths": 3, "batch_norm": False},
        "backbone": small_backbone(),
    },
    "linear_gc_avg_add": {
        "rnn": {"name": "linear", "out_channels": [32, 16]},
        "attn": {"name": "gc", "pooling_type": "avg", "fusion_types": ["add", "mul"]},
        "backbone": small_backbone(),
    },
    "lstm_none_recover_length": {
        "rnn": {"hidden_sizes": [8, 8]},
        "attn": "none",
        "backbone": small_backbone(),
        "recover_length": True,
    },
}


@needs_data
@pytest.mark.parametrize("name", list(SEQ_LAB_CASES))
def test_seq_lab_matches_torch_ecg_on_real_ecg(name, cpsc_x):
    case = copy.deepcopy(SEQ_LAB_CASES[name])
    ours, theirs = build_both("ECG_SEQ_LAB_NET", 1, seq_lab(**case))
    assert_same(ours, theirs, cpsc_x)
    again = ECG_SEQ_LAB_NET(CLASSES, 1, ours.config)  # the canonical config rebuilds it
    again.load_state_dict(ours.state_dict(), strict=True)
    assert again.config == ours.config


@needs_data
@pytest.mark.parametrize(
    "lstm",
    [{}, {"retseq": False}, {"bidirectional": False, "hidden_sizes": [64]}],
    ids=["bilstm_se_max", "last_frame", "uni_lstm"],
)
def test_leadwise_crnn_matches_torch_ecg_on_real_ecg(lstm, cinc_x):
    ours, theirs = build_both("ECG_CRNN", 12, crnn_leadwise(**lstm))
    assert_same(ours, theirs, cinc_x)
    if lstm.get("retseq") is False:  # torch_ecg ignores attention and pooling then
        assert ours.config["attn"] == {"name": "none"}
        assert not any(k.startswith("attn.") for k in ours.state_dict())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hidden=st.lists(st.integers(8, 16), min_size=1, max_size=3),  # SE: 8 or more
    bidirectional=st.booleans(),
    bias=st.booleans(),
    attn=st.sampled_from(["none", "se", "gc", "nl"]),
    samples=st.integers(64, 200),
)
def test_any_lstm_config_matches_torch_ecg(hidden, bidirectional, bias, attn, samples):
    rnn = {"hidden_sizes": hidden, "bidirectional": bidirectional, "bias": bias}
    config = seq_lab(rnn=rnn, attn=attn, backbone=small_backbone())
    ours, theirs = build_both("ECG_SEQ_LAB_NET", 1, config)
    x = torch.randn(1, 1, samples, generator=torch.Generator().manual_seed(samples))
    assert_same(ours, theirs, x)


def test_macs_count_the_lstm():
    """count_macs adds 4 gates x (input + hidden) x hidden per frame, direction, layer."""
    plain = ECG_SEQ_LAB_NET(CLASSES, 1, seq_lab(rnn={"name": "none"}, attn="none"))
    lstm = ECG_SEQ_LAB_NET(CLASSES, 1, seq_lab(attn="none"))
    frames = 5000 // 8
    per_frame = 2 * (4 * 256 * (192 + 256) + 4 * 256 * (512 + 256))
    assert (
        lstm.count_macs(5000) - plain.count_macs(5000)
        == frames * per_frame + frames * (512 - 192) * 256
    )  # the classifier's first layer reads 512 features, not 192


# --------------------------------------------------------------------------------------
# Bad configs and checkpoints: one line naming the key (or both sizes)

REFUSALS = {
    "gru": (
        seq_lab(rnn={"name": "gru"}),
        r"config\['rnn'\]\['name'\]: 'gru' is not supported; choose from: none, lstm, linear",
    ),
    "sa": (
        seq_lab(attn="sa"),
        r"config\['attn'\]\['name'\]: 'sa' is not supported; choose from: none, se, gc, nl",
    ),
    "hidden_sizes": (
        seq_lab(rnn={"hidden_sizes": [256, 0]}),
        r"config\['rnn'\]\['lstm'\]\['hidden_sizes'\]\[1\]: expected a positive integer",
    ),
    "lstm_dropouts": (
        seq_lab(rnn={"dropouts": [0.1, 0.2, 0.3]}),
        r"config\['rnn'\]\['lstm'\]\['dropouts'\]: 3 values for 2 LSTM layers",
    ),
    "lstm_key": (
        seq_lab(rnn={"num_layers": 2}),
        r"config\['rnn'\]\['lstm'\]: unknown key\(s\) 'num_layers'; valid keys: hidden_sizes",
    ),
    "seq_lab_last_frame": (
        seq_lab(rnn={"retseq": False}),
        r"config\['rnn'\]\['lstm'\]\['retseq'\]: false keeps only the last frame",
    ),
    "gc_pooling": (
        seq_lab(attn={"name": "gc", "pooling_type": "max"}),
        r"config\['attn'\]\['gc'\]\['pooling_type'\]: 'max'; choose from: attn, avg",
    ),
    "nl_layer": (
        seq_lab(attn={"name": "nl", "filter_lengths": {"q": 3}}),
        r"config\['attn'\]\['nl'\]\['filter_lengths'\]: unknown layer",
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals_name_the_key(name):
    config, message = REFUSALS[name]
    with pytest.raises(MscnnError, match=message):
        ECG_SEQ_LAB_NET(CLASSES, 1, copy.deepcopy(config))


def test_checkpoint_with_other_lstm_sizes_names_both(tmp_path):
    trained = ECG_SEQ_LAB_NET(CLASSES, 1, seq_lab(rnn={"hidden_sizes": [8]}, attn="none"))
    path = tmp_path / "model.pt"
    mscnn.save_checkpoint(path, trained, leads=["II"], fs=500)
    checkpoint = torch.load(path, weights_only=False)
    bigger = ECG_SEQ_LAB_NET(CLASSES, 1, seq_lab(rnn={"hidden_sizes": [16]}, attn="none"))
    checkpoint["config"] = bigger.config
    torch.save(checkpoint, path)
    with pytest.raises(
        MscnnError,
        match=r"rnn\.bidirectional_lstm_1\.weight_ih_l0 \(file "
        r"\(32, 192\), model \(64, 192\)\)",
    ):
        mscnn.load_checkpoint(path)


# --------------------------------------------------------------------------------------
# Streaming: refused naming the layer where it needs the future; per-frame layers stream


def test_bidirectional_lstm_is_refused_for_streaming_naming_the_layer():
    model = ECG_SEQ_LAB_NET(CLASSES, 1, seq_lab(attn="none")).eval()
    with pytest.raises(
        MscnnError,
        match=r"layer rnn\.bidirectional_lstm_1 \(LSTM\) runs "
        r"backwards.*docs/streaming\.md",
    ):
        StreamingModel(model, 80)


def uni_lstm_detector():
    """A small unidirectional two-layer LSTM detector (no attention: SE needs the record)."""
    config = seq_lab(
        rnn={"hidden_sizes": [16, 8], "bidirectional": False, "dropouts": [0.2, 0]},
        attn="none",
        backbone=small_backbone(),
    )
    model = ECG_SEQ_LAB_NET(CLASSES, 1, config)
    seeded_init(model, seed=11)
    return model.eval()


@pytest.fixture(scope="module")
def uni_lstm():
    return uni_lstm_detector()


@pytest.fixture(scope="module")
def cpsc_20s():
    """Two CPSC2019 records back to back: 20 s of real ECG (mV)."""
    return torch.from_numpy(ecg_data.cpsc2019_records().signals[[4, 21]].reshape(1, -1).copy())


def test_unidirectional_lstm_state_is_h_and_c_per_layer(uni_lstm):
    step = mscnn.StepModule(uni_lstm, 512)
    specs = {s.name: s.shape for s in step.state_specs()}
    for layer, hidden in (("lstm_1", 16), ("lstm_2", 8)):
        assert specs[f"rnn.{layer}.h"] == specs[f"rnn.{layer}.c"] == (1, 1, hidden)
    # The LSTM's hops start at offline frame 0: the step's lag is whole hops.
    assert step.delay_frames % step.frames_per_step == 0


@needs_data
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hop=st.sampled_from([160, 512, 1024]),
    cuts=st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
)
def test_unidirectional_lstm_streams_exactly_on_real_ecg(uni_lstm, cpsc_20s, hop, cuts):
    """20 s of real ECG pushed in chunks cut anywhere, at any hop: the offline model's
    logits (h and c carried between hops, zero at offline frame 0). One torch thread, as
    StreamingModel advises for its many small ops."""
    x = cpsc_20s
    bounds = [0, *sorted(cuts), x.shape[-1]]
    s = StreamingModel(uni_lstm, hop)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [s.push(x[:, a:b]) for a, b in itertools.pairwise(bounds)]
        streamed = torch.cat([*parts, s.flush()], dim=-1)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        expected = uni_lstm(x[None])[0].T
    assert streamed.shape == expected.shape
    assert (streamed - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize("attn", ["gc", "nl"])
def test_global_attention_is_refused_for_streaming(attn):
    config = seq_lab(rnn={"name": "none"}, attn=attn, backbone=small_backbone())
    model = ECG_SEQ_LAB_NET(CLASSES, 1, config).eval()
    with pytest.raises(MscnnError, match=r"layer attn \(\w+\) weighs every frame"):
        StreamingModel(model, 80)


def test_linear_rnn_streams_exactly():
    config = seq_lab(
        rnn={"name": "linear", "out_channels": [16, 8]}, attn="none", backbone=small_backbone()
    )
    model = ECG_SEQ_LAB_NET(CLASSES, 1, config)
    seeded_init(model, seed=3)
    model.eval()
    x = torch.randn(1, 1000, generator=torch.Generator().manual_seed(1))
    s = StreamingModel(model, 80)
    streamed = torch.cat([s.push(x[:, :333]), s.push(x[:, 333:]), s.flush()], dim=-1)
    with torch.no_grad():
        expected = model(x[None])[0].T
    assert streamed.shape == expected.shape
    assert (streamed - expected).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------------------
# Reduced-lead variants: variant(x[:, kept]) == full(zero_fill(x)), the constant inputs kept


def small_leadwise_crnn(head="ECG_CRNN", rnn="lstm", attn="se", **lstm):
    config = crnn_leadwise(**lstm)
    config.cnn.multi_scopic_leadwise["num_filters"] = [[24, 48, 96]] * 3  # 2/4/8 per lead
    config.rnn.name = rnn
    config.rnn.lstm.hidden_sizes = [16, 16]
    config.attn.name = attn
    if head == "ECG_SEQ_LAB_NET":
        config.global_pool = "none"
        config.clf.out_channels = [32]
        config.clf.dropouts = 0.0
    model = mscnn.HEADS[head](CLASSES, 12, config)
    seeded_init(model, seed=11)
    return model.eval()


def test_dropped_leads_features_are_not_constant_over_frames():
    """Why the LSTM variant keeps the constant inputs: the backbone's output for all-zero
    leads differs at the edges of the window (zero padding), so it would enter the LSTM's
    input projection as a per-frame term, not as a bias ONNX's LSTM op can hold."""
    model = small_leadwise_crnn()
    with torch.no_grad():
        z = model.cnn(torch.zeros(1, 12, 1000))[0]  # (channels, frames)
    spread = (z - z[:, z.shape[1] // 2 : z.shape[1] // 2 + 1]).abs().max(dim=0).values
    assert spread[0] > 1e-3 and spread[-1] > 1e-3  # the edges differ from the middle
    assert spread[len(spread) // 2] == 0


@needs_data
@pytest.mark.parametrize(
    ("head", "rnn", "attn", "lstm"),
    [
        ("ECG_CRNN", "lstm", "se", {}),
        ("ECG_SEQ_LAB_NET", "lstm", "se", {"bidirectional": False}),
        ("ECG_SEQ_LAB_NET", "linear", "gc", {}),
    ],
    ids=["crnn_bilstm_se", "seq_lab_uni_lstm", "linear_gc"],
)
def test_reduced_lead_variants_keep_the_contract(head, rnn, attn, lstm, cinc_x):
    full = small_leadwise_crnn(head, rnn, attn, **lstm)
    for name in ("3",) if attn != "gc" else ("6",):
        kept = mscnn.resolve_leads(name)[1]
        variant = mscnn.derive_variant(full, kept)
        assert isinstance(variant, mscnn.ConstantInputsModel) and variant.in_channels == len(kept)
        with torch.no_grad():
            expected = full(mscnn.zero_fill(cinc_x[:, kept], kept, 12))
            got = variant(cinc_x[:, kept])
        assert got.shape == expected.shape == variant.compute_output_shape(1000, 2)
        scale = max(1.0, expected.abs().max().item())
        assert (got - expected).abs().max().item() / scale <= 1e-5
        assert variant.count_macs(1000) < full.count_macs(1000)  # the dropped convs are gone
