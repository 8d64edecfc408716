"""compute_output_shape, receptive field and MAC count agree with what forward does; the
MAC count also agrees with torch's own FLOP counter and with a count done by hand."""

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from strategies import configs, refused, runnable
from torch.utils.flop_counter import FlopCounterMode

import mscnn
from mscnn import MscnnError, MultiScopicCNN


def test_output_shape_matches_forward():
    """Every example runs the model: configs and lengths are drawn valid (see
    strategies.runnable), and the count of compared examples is asserted."""
    compared = []

    @given(runnable(), st.integers(1, 3))
    def check(spec, batch):
        in_channels, config, seq_len = spec
        model = MultiScopicCNN(in_channels, **config).eval()
        expected = model.compute_output_shape(seq_len, batch)
        with torch.no_grad():
            x = torch.randn(batch, in_channels, seq_len, generator=torch.Generator().manual_seed(0))
            out = model(x)
        assert tuple(out.shape) == expected
        compared.append(seq_len)

    check()
    assert len(compared) >= settings().max_examples


def test_forward_refuses_what_compute_output_shape_refuses():
    refusals = []

    @given(refused(), st.integers(1, 3))
    def check(spec, batch):
        in_channels, config, seq_len = spec
        model = MultiScopicCNN(in_channels, **config).eval()
        with pytest.raises(MscnnError, match=f"seq_len {seq_len}"):
            model(torch.zeros(batch, in_channels, seq_len))
        refusals.append(seq_len)

    check()
    assert len(refusals) >= settings().max_examples


@given(configs(), st.sampled_from(["avg", "conv"]))
def test_receptive_field_is_the_span_of_the_gradient(spec, mode):
    """In a linear model with positive weights, the inputs that reach one output sample are
    exactly those with a non-zero gradient: their span is the receptive field."""
    in_channels, config = spec
    config["block"].update(activation=None, batch_norm=False, subsample_mode=mode)
    model = MultiScopicCNN(in_channels, **config).eval()
    field = model.receptive_field()
    seq_len = 3 * field + 64
    with torch.no_grad():
        for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv1d)):
            conv.weight.fill_(1.0)
    spans = []
    for branch in model.branches.values():
        x = torch.zeros(1, in_channels, seq_len, requires_grad=True)
        out = branch(x)
        out[..., out.shape[-1] // 2].sum().backward()
        hit = torch.nonzero(x.grad.abs().sum(dim=(0, 1))).flatten()
        assert hit[0] > 0 and hit[-1] < seq_len - 1  # the field lies inside the input
        spans.append(int(hit[-1] - hit[0]) + 1)
    assert max(spans) == field


def test_presets_output_shape_and_field():
    for name, channels in (
        ("cpsc2019", 192),
        ("multi_scopic", 1152),
        ("multi_scopic_leadwise", 2304),
    ):
        model = mscnn.load_model(name).model
        assert model.compute_output_shape(5000, 1) == (1, channels, 625)
        assert model.compute_output_shape() == (None, channels, None)
        assert model.receptive_field() == 1984
        assert model.receptive_field(fs=500) == pytest.approx(3.968)


def test_too_short_input_is_named():
    model = mscnn.load_model("cpsc2019").model
    with pytest.raises(MscnnError, match="seq_len 4 is too short: branch 0 block 2"):
        model.compute_output_shape(4)
    with pytest.raises(MscnnError, match="positive integer"):
        model.compute_output_shape(0)
    with pytest.raises(MscnnError, match=r"expected \(batch, 1 leads, samples\)"):
        model(torch.zeros(1, 2, 100))


# --------------------------------------------------------------------------------------
# MACs: two oracles that share nothing with count_macs


def torch_conv_macs(model: MultiScopicCNN, batch: int, seq_len: int) -> int:
    """Multiply-accumulates of the convolutions torch runs: its FLOP counter counts 2 per
    MAC for aten.convolution (pooling, norms and activations are not counted by either)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(batch, model.in_channels, seq_len))
    counts = counter.get_flop_counts()["Global"]
    assert {str(op) for op in counts} <= {"aten.convolution"}, counts
    return counter.get_total_flops() // 2


def conv_macs_run(model: MultiScopicCNN, batch: int, seq_len: int) -> int:
    """The same figure read off every Conv1d torch actually ran (its output's size x the
    inputs and taps each output sums over): cheaper than the FLOP counter, equally blind
    to how count_macs works out lengths."""
    total = 0

    def count(conv, _inputs, out):
        nonlocal total
        total += out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0]

    hooks = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv1d)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(batch, model.in_channels, seq_len))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def test_the_two_oracles_agree():
    model = small("conv", [[3, 5], [5, 3]])
    assert conv_macs_run(model, 2, 12) == torch_conv_macs(model, 2, 12) > 0


def test_macs_match_the_convolutions_torch_runs():
    compared = []

    @given(runnable(), st.integers(1, 3))
    def check(spec, batch):
        in_channels, config, seq_len = spec
        model = MultiScopicCNN(in_channels, **config).eval()
        assert model.count_macs(seq_len, batch) == conv_macs_run(model, batch, seq_len)
        event(f"subsample_mode {config['block']['subsample_mode']}")
        compared.append(seq_len)

    check()
    assert len(compared) >= settings().max_examples


def small(mode: str, filter_lengths) -> MultiScopicCNN:
    config = {
        **mscnn.PRESETS["cpsc2019"].config,
        "groups": 2,
        "scopes": [[[1], [1]], [[2], [2]]],
        "num_filters": [[4, 6], [4, 6]],
        "filter_lengths": filter_lengths,
        "subsample_lengths": [2, 2],
        "dropouts": 0,
    }
    config["block"] = {**config["block"], "subsample_mode": mode}
    return MultiScopicCNN(2, **config).eval()


@pytest.mark.parametrize(
    ("mode", "per_sample"),
    [
        # 2 leads, groups 2, 12 samples; a conv's MACs = output samples x out channels x
        # (in channels / groups) x kernel. "Same" padding keeps the length through a conv;
        # each block's pooling (or 1x1 strided conv) halves it: 12 -> 6 -> 3.
        #   branch 0: conv k3 2->4 at 12: 12*4*1*3 = 144;  conv k3 4->6 at 6: 6*6*2*3 = 216
        #   branch 1: conv k5 2->4 at 12: 12*4*1*5 = 240;  conv k3 4->6 at 6: 6*6*2*3 = 216
        ("max", 144 + 216 + 240 + 216),
        # "conv" down-sampling adds a 1x1 grouped conv per block at the halved length:
        #   4->4 at 6: 6*4*2*1 = 48;  6->6 at 3: 3*6*3*1 = 54;  per branch, two branches
        ("conv", 144 + 216 + 240 + 216 + 2 * (48 + 54)),
    ],
)
def test_macs_of_a_small_config_counted_by_hand(mode, per_sample):
    model = small(mode, [[3, 3], [5, 3]])
    assert model.compute_output_shape(12, 3) == (3, 12, 3)
    assert model.count_macs(12) == per_sample
    assert type(model.count_macs(12)) is int  # an exact count, never a float
    assert model.count_macs(12, batch_size=3) == 3 * per_sample
    assert torch_conv_macs(model, 3, 12) == 3 * per_sample


def test_macs_of_even_kernels_match_torch_flop_counter():
    """The (1, 0) zero pad after an even kernel adds a sample no conv computed: not
    counted. Kernel 4 at dilation 1: the conv outputs 11 of 12 samples, the pad one."""
    model = small("max", [[4, 3], [5, 3]])
    assert model.count_macs(12) == torch_conv_macs(model, 1, 12)


def test_preset_macs_match_torch_flop_counter():
    """The figure the benchmark's GFLOP/s rest on, for each preset at 10 s of 500 Hz."""
    for name in ("cpsc2019", "multi_scopic", "multi_scopic_leadwise"):  # the backbones
        model = mscnn.load_model(name).model.eval()
        assert model.count_macs(5000) == torch_conv_macs(model, 1, 5000), name
