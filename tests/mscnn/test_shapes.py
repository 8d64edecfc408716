"""compute_output_shape, receptive field and MAC count agree with what forward does."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs

import mscnn
from mscnn import MscnnError, MultiScopicCNN


@given(configs(), st.integers(1, 200), st.integers(1, 3))
def test_output_shape_matches_forward(spec, seq_len, batch):
    in_channels, config = spec
    model = MultiScopicCNN(in_channels, **config).eval()
    try:
        expected = model.compute_output_shape(seq_len, batch)
    except MscnnError:
        # Too short, or branches that disagree on length: forward must refuse it too.
        with pytest.raises(MscnnError):
            model(torch.zeros(batch, in_channels, seq_len))
        return
    with torch.no_grad():
        out = model(torch.randn(batch, in_channels, seq_len))
    assert tuple(out.shape) == expected
    assert model.count_macs(seq_len, batch) > 0


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
