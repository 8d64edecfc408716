"""Hypothesis strategies shared by the test packages."""

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
