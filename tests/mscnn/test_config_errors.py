"""Each bad config raises MscnnError naming the key and what was expected."""

import copy

import pytest

from mscnn import PRESETS, MscnnError, MultiScopicCNN


def preset(**changes):
    config = copy.deepcopy(dict(PRESETS["cpsc2019"].config))
    block = changes.pop("block", None)
    config.update(changes)
    if block is not None:
        config["block"] = {**config["block"], **block}
    return config


CASES = {
    "branches_disagree": (
        preset(num_filters=[[16, 32, 64]] * 2),
        r"config\['num_filters'\]: expected 3 entries \(one per branch, as in 'scopes'\), got 2",
    ),
    "blocks_disagree": (
        preset(filter_lengths=[[11, 7, 5], [11, 7], [11, 7, 5]]),
        r"config\['filter_lengths'\]\[1\]: expected 3 entries \(one per block",
    ),
    "convs_disagree": (
        preset(num_filters=[[16, [32, 32, 32], 64]] * 3),
        r"config\['num_filters'\]\[0\]\[1\]: expected 2 entries \(one per conv",
    ),
    "subsample_blocks_disagree": (
        preset(subsample_lengths=[[2, 2], 2, 2]),
        r"config\['subsample_lengths'\]\[0\]: expected 3 entries \(one per block",
    ),
    "zero_filter_length": (
        preset(filter_lengths=[[11, 0, 5]] * 3),
        r"config\['filter_lengths'\]\[0\]\[1\]: expected a positive integer",
    ),
    "negative_dilation": (
        preset(scopes=[[[1], [1, -1], [1, 1, 1]]] * 3),
        r"config\['scopes'\]\[0\]\[1\]\[1\]: expected a positive integer, got -1",
    ),
    "zero_subsample": (
        preset(subsample_lengths=[0, 2, 2]),
        r"config\['subsample_lengths'\]\[0\]\[0\]: expected a positive integer",
    ),
    "float_filters": (
        preset(num_filters=[[16.5, 32, 64]] * 3),
        r"config\['num_filters'\]\[0\]\[0\]: expected a positive integer, got 16.5",
    ),
    "zero_groups": (preset(groups=0), r"config\['groups'\]: expected a positive integer"),
    "bad_dropout": (
        preset(dropouts=[[0, 1.5, 0]] * 3),
        r"config\['dropouts'\]\[0\]\[1\]: expected a dropout rate in \[0, 1\)",
    ),
    "bad_dropout_type": (
        preset(dropouts={"p": 0.1, "type": "2d"}),
        r"config\['dropouts'\]\[0\]\[0\]\['type'\]: expected null or '1d'",
    ),
    "unknown_key": (preset(num_filter=[1]), r"unknown key\(s\) 'num_filter'; valid keys"),
    "missing_key": ({"scopes": [[[1]]]}, r"missing key\(s\) 'num_filters', 'filter_lengths'"),
    "unknown_mode": (
        preset(block={"subsample_mode": "lse"}),
        r"subsample_mode'\]: unknown value 'lse'; choose from: max, avg, conv",
    ),
    "unknown_activation": (
        preset(block={"activation": "swishy"}),
        r"activation'\]: unknown value 'swishy'; choose from: relu",
    ),
    "unknown_norm": (
        preset(block={"batch_norm": "layer_norm"}),
        r"batch_norm'\]: unknown value 'layer_norm'; choose from: batch_norm",
    ),
    "unknown_block_key": (
        preset(block={"ordering": "bca"}),
        r"config\['block'\]: unknown or unsupported key\(s\) 'ordering'",
    ),
    "scopes_not_list": (preset(scopes="1,2,4"), r"config\['scopes'\]: expected a list"),
    "empty_branch": (
        preset(scopes=[[], [[1]], [[1]]]),
        r"config\['scopes'\]\[0\]: expected a non-empty list",
    ),
    "bias_not_bool": (preset(block={"bias": "yes"}), r"bias'\]: expected true or false"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config(name):
    config, message = CASES[name]
    with pytest.raises(MscnnError, match=message):
        MultiScopicCNN(1, **config)


def test_groups_must_divide_leads_and_filters():
    config = copy.deepcopy(dict(PRESETS["multi_scopic_leadwise"].config))
    with pytest.raises(MscnnError, match=r"groups'\] = 12 does not divide in_channels = 8"):
        MultiScopicCNN(8, **config)
    config["num_filters"] = [[192, 380, 768]] * 3
    with pytest.raises(
        MscnnError,
        match=r"num_filters'\]\[0\]\[1\]: 380 filters are not "
        r"divisible by groups = 12",
    ):
        MultiScopicCNN(12, **config)


@pytest.mark.parametrize("in_channels", [0, -1, 1.5, True])
def test_bad_in_channels(in_channels):
    with pytest.raises(MscnnError, match="in_channels: expected a positive integer"):
        MultiScopicCNN(in_channels, **PRESETS["cpsc2019"].config)


def test_canonical_config_rebuilds_the_same_layers():
    """What a checkpoint stores (model.config) builds an identical model."""
    config = preset(dropouts=0.1, block={"norm": True})
    model = MultiScopicCNN(1, **config)
    assert model.config["block"]["batch_norm"] is True and "norm" not in model.config["block"]
    again = MultiScopicCNN(1, **model.config)
    assert again.spec == model.spec
    assert list(again.state_dict()) == list(model.state_dict())
