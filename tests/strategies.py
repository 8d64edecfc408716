"""Hypothesis strategies shared by the test packages."""

from hypothesis import assume, event
from hypothesis import strategies as st


@st.composite
def configs(draw, wide: bool = False):
    """Random valid configs: branches, blocks, convs, odd and even kernels, groups, modes.

    `wide` also draws channel counts that are multiples of 8, which the CPU conv schedule
    takes (others keep TVM's default loops)."""
    in_channels = draw(st.sampled_from([1, 2, 3, 4]))
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if in_channels % g == 0]))
    n_branches = draw(st.integers(1, 3))
    n_blocks = draw(st.integers(1, 3))  # equal per branch so the lengths can meet
    subsample = draw(st.lists(st.integers(1, 3), min_size=n_blocks, max_size=n_blocks))
    scopes, filters, lengths = [], [], []
    for _ in range(n_branches):
        convs = [draw(st.integers(1, 3)) for _ in range(n_blocks)]
        scopes.append([draw(st.lists(st.integers(1, 8), min_size=n, max_size=n)) for n in convs])
        # >= 2 channels per group: GroupNorm refuses a group of a single value
        unit = draw(st.sampled_from([1, 8])) if wide else 1
        filters.append([groups * unit * draw(st.integers(2, 3)) for _ in range(n_blocks)])
        lengths.append([draw(st.integers(1, 8)) for _ in range(n_blocks)])
    block = {
        "subsample_mode": draw(st.sampled_from(["max", "avg", "conv"])),
        "batch_norm": draw(st.sampled_from([False, True, "group_norm"])),
        "activation": draw(st.sampled_from(["relu", "gelu", "leaky", None])),
        "kw_activation": {},
    }
    config = {
        "scopes": scopes,
        "num_filters": filters,
        "filter_lengths": lengths,
        "subsample_lengths": [subsample] * n_branches,
        "dropouts": draw(st.sampled_from([0, 0.2, {"p": 0.1, "type": "1d"}])),
        "groups": groups,
        "block": block,
    }
    return in_channels, config


def accepted_length(in_channels: int, config: dict, lengths) -> int | None:
    """The first of `lengths` the model accepts (compute_output_shape), or None."""
    import mscnn

    model = mscnn.MultiScopicCNN(in_channels, **config)
    for seq_len in lengths:
        try:
            model.compute_output_shape(seq_len)
        except mscnn.MscnnError:
            continue
        return seq_len
    return None


@st.composite
def runnable(draw, min_len: int = 1, max_len: int = 200, wide: bool = False):
    """(in_channels, config, seq_len) that the model accepts, so every example runs the model.

    Some configs refuse a length (too short, or branches whose lengths disagree after an
    even kernel at an even dilation); the first accepted length at or above the drawn one
    is taken, and a config that accepts none in that window is rejected (not passed)."""
    in_channels, config = draw(configs(wide=wide))
    start = draw(st.integers(min_len, max_len))
    seq_len = accepted_length(in_channels, config, range(start, start + 32))
    event(
        "rejected: no accepted length in the window"
        if seq_len is None
        else "length accepted"
        if seq_len == start
        else "length moved up to one accepted"
    )
    assume(seq_len is not None)
    return in_channels, config, seq_len


@st.composite
def refused(draw, max_len: int = 40):
    """(in_channels, config, seq_len) that compute_output_shape refuses."""
    in_channels, config = draw(configs())
    seq_len = draw(st.integers(1, max_len))
    assume(accepted_length(in_channels, config, [seq_len]) is None)
    return in_channels, config, seq_len
