"""mscnn loads torch_ecg state dicts (strict) and computes what torch_ecg computes."""

import copy
import warnings

import pytest
import torch

import mscnn
from mscnn import PRESETS, MultiScopicCNN, seeded_init

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch_ecg's imports warn about deprecated torch APIs
    from torch_ecg.model_configs import (
        ECG_CRNN_CONFIG,
        ECG_SEQ_LAB_NET_CONFIG,
        multi_scopic,
        multi_scopic_leadwise,
    )
    from torch_ecg.models import ECG_CRNN as TorchEcgCRNN
    from torch_ecg.models import ECG_SEQ_LAB_NET as TorchEcgSeqLab
    from torch_ecg.models.cnn.multi_scopic import MultiScopicCNN as TorchEcgMultiScopicCNN

TORCH_ECG_PRESETS = {
    "cpsc2019": ECG_SEQ_LAB_NET_CONFIG.cnn.multi_scopic,
    "multi_scopic": multi_scopic,
    "multi_scopic_leadwise": multi_scopic_leadwise,
}


def small(**overrides):
    """A two-branch config small enough to run many variations quickly."""
    config = copy.deepcopy(dict(PRESETS["cpsc2019"].config))
    config.update(
        scopes=[[[1], [1, 2]], [[2, 4], [8]]],
        num_filters=[[8, 16], [8, 16]],
        filter_lengths=[[5, 3], [7, 3]],
        subsample_lengths=[2, 2],
        dropouts=[[0.1, 0], [0, 0.3]],
    )
    block = overrides.pop("block", {})
    config.update(overrides)
    config["block"] = {**config["block"], **block}
    return config


NON_DEFAULT = {
    # even kernels with even dilations grow the length by one: lengths still meet at 300
    "even_kernels": small(scopes=[[[1], [1, 2]], [[3, 4], [8]]], filter_lengths=[[4, 6], [2, 8]]),
    "per_conv_lengths": small(filter_lengths=[[5, [3, 4]], [[7, 6], 3]]),
    "per_conv_filters_one_block": small(
        scopes=[[[1, 2, 3]], [[2, 4]]],
        num_filters=[[[4, 8, 16]], [[8, 16]]],
        filter_lengths=[[5], [3]],
        subsample_lengths=[3, 3],
        dropouts=[[0], [0]],
    ),
    "conv_subsample": small(block={"subsample_mode": "conv"}),
    "avg_subsample": small(block={"subsample_mode": "avg"}, subsample_lengths=[4, 4]),
    "batch_norm": small(block={"batch_norm": True}),
    "group_norm_leadwise": small(groups=4, block={"batch_norm": "group_norm"}),
    "leaky_no_bias": small(
        block={"activation": "leaky", "kw_activation": {"negative_slope": 0.1}, "bias": False}
    ),
    "gelu": small(block={"activation": "gelu", "kw_activation": {}}),
    "mish": small(block={"activation": "mish", "kw_activation": {}}),
    "prelu": small(block={"activation": "prelu", "kw_activation": {}}),
    "no_activation": small(block={"activation": None}),
    "dropout_dicts": small(dropouts=[[{"p": 0.2, "type": "1d"}, 0], [{"p": 0.1, "type": None}, 0]]),
}
IN_CHANNELS = {"group_norm_leadwise": 4}


def assert_same_model(ours: MultiScopicCNN, theirs: torch.nn.Module, in_channels: int, seq_len):
    """Both state dicts have the same names and shapes, and the outputs agree."""
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    seeded_init(theirs, seed=7)  # non-trivial running statistics, as after training
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, in_channels, seq_len, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    assert ours.compute_output_shape(seq_len, 2) == tuple(expected.shape)


@pytest.mark.parametrize("preset", list(TORCH_ECG_PRESETS))
def test_presets_match_torch_ecg(preset):
    theirs = TorchEcgMultiScopicCNN(PRESETS[preset].in_channels, **TORCH_ECG_PRESETS[preset])
    ours = MultiScopicCNN(PRESETS[preset].in_channels, **PRESETS[preset].config)
    assert_same_model(ours, theirs, PRESETS[preset].in_channels, seq_len=2000)


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_non_default_configs_match_torch_ecg(name):
    config = NON_DEFAULT[name]
    in_channels = IN_CHANNELS.get(name, 1)
    theirs = TorchEcgMultiScopicCNN(in_channels, **copy.deepcopy(config))
    ours = MultiScopicCNN(in_channels, **config)
    assert_same_model(ours, theirs, in_channels, seq_len=300)


def test_torch_ecg_preset_configs_are_ours():
    """Our preset tables hold exactly torch_ecg's layer settings."""
    for name, theirs in TORCH_ECG_PRESETS.items():
        ours = PRESETS[name].config
        for key in (
            "scopes",
            "num_filters",
            "filter_lengths",
            "subsample_lengths",
            "dropouts",
            "groups",
        ):
            assert ours[key] == theirs[key], (name, key)
        for key, value in ours["block"].items():
            assert theirs["block"][key] == value, (name, key)


def test_per_block_subsample_lengths_are_honoured():
    """torch_ecg substitutes filter_lengths here; we use the given subsample lengths."""
    config = small(subsample_lengths=[[2, 3], [3, 2]])
    model = MultiScopicCNN(1, **config).eval()
    assert [blk.spec.subsample for blk in model.branches["branch_0"]] == [2, 3]
    with torch.no_grad():
        out = model(torch.randn(1, 1, 600))
    assert out.shape[-1] == 100 == model.compute_output_shape(600)[-1]


def test_per_conv_filters_across_blocks_work():
    """torch_ecg feeds a per-conv filter list on as the next block's in_channels."""
    config = small(num_filters=[[[4], [8, 16]], [[4, 4], [16]]])
    model = MultiScopicCNN(1, **config).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64)).shape == (1, 32, 16)


def test_default_model_is_seeded_and_has_running_stats():
    a = mscnn.load_model("cpsc2019", seed=0).model
    b = mscnn.load_model("cpsc2019", seed=0).model
    c = mscnn.load_model("cpsc2019", seed=1).model
    for (k, va), vb, vc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
        if va.is_floating_point():
            assert not torch.equal(va, vc), k
    bn = a.branches["branch_0"].block_0.bn
    assert bn.running_mean.abs().max() > 0.1
    assert (bn.running_var - 1).abs().max() > 0.1
    assert not a.training


def test_default_model_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    mscnn.load_model("cpsc2019")
    assert torch.equal(torch.rand(3), expected)


def torch_ecg_whole_model(preset: str) -> torch.nn.Module:
    """torch_ecg's own default config, with only the choices the preset names changed."""
    p = PRESETS[preset]
    config = torch_ecg_config(preset)
    if p.head == "ECG_SEQ_LAB_NET":
        return TorchEcgSeqLab(list(p.classes), p.in_channels, config)
    return TorchEcgCRNN(list(p.classes), p.in_channels, config)


def torch_ecg_config(preset: str):
    if preset in ("cpsc2019_qrs", "seq_lab_crnn"):
        config = copy.deepcopy(ECG_SEQ_LAB_NET_CONFIG)
        if preset == "cpsc2019_qrs":
            config.rnn.name = "none"
            config.attn.name = "none"
        return config
    config = copy.deepcopy(ECG_CRNN_CONFIG)
    config.cnn.name = "multi_scopic_leadwise"
    if preset == "leadwise_crnn":
        config.rnn.name = "lstm"
    return config


@pytest.mark.parametrize("preset", ["seq_lab_crnn", "leadwise_crnn"])
def test_crnn_presets_are_torch_ecg_defaults(preset):
    """The CRNN presets resolve to the same model as torch_ecg's default ECG_SEQ_LAB_NET
    config unchanged, and its ECG_CRNN config on multi_scopic_leadwise with its default
    LSTM (that those configs give torch_ecg's logits: tests/mscnn/test_recurrent_heads.py)."""
    from mscnn.heads import resolve_head_config

    p = PRESETS[preset]
    theirs, _ = resolve_head_config(p.head, p.in_channels, p.classes, torch_ecg_config(preset))
    ours, _ = resolve_head_config(p.head, p.in_channels, p.classes, p.config)
    assert ours == theirs
    assert (
        ours.rnn.bidirectional
        and ours.rnn.hidden_sizes
        == {
            "seq_lab_crnn": (256, 256),
            "leadwise_crnn": (192, 192),
        }[preset]
    )


@pytest.mark.parametrize("preset", ["cpsc2019_qrs", "leadwise_classifier"])
def test_whole_model_presets_are_torch_ecg_defaults(preset, tmp_path):
    """The whole-model presets are torch_ecg's default ECG_SEQ_LAB_NET (rnn and attention
    none; and unchanged: the CRNN) and ECG_CRNN (multi_scopic_leadwise; and with its
    default LSTM): torch_ecg's config builds the preset's
    layers, and a bare torch_ecg state dict loads with the preset, giving its logits."""
    p = PRESETS[preset]
    theirs = torch_ecg_whole_model(preset)
    from_their_config = mscnn.HEADS[p.head](p.classes, p.in_channels, theirs.config)
    assert from_their_config.spec == mscnn.load_model(preset).model.spec
    seeded_init(theirs, seed=9)
    theirs.eval()
    torch.save(theirs.state_dict(), tmp_path / "torch_ecg.pth")
    loaded = mscnn.load_checkpoint(tmp_path / "torch_ecg.pth", preset=preset)
    x = torch.randn(1, p.in_channels, 2000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = theirs(x), loaded.model(x)
    assert got.shape == expected.shape == loaded.model.compute_output_shape(2000, 1)
    assert (got - expected).abs().max().item() <= 1e-6
