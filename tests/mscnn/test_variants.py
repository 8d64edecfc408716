"""Reduced-lead variants equal the full model fed zeros on the dropped leads."""

import copy

import pytest
import torch

import mscnn
from mscnn import LEAD_SETS, LEADS_12, MscnnError, MultiScopicCNN, derive_variant, zero_fill

SEQ_LEN = 1000  # long enough for the full receptive field's padding effects to show


@pytest.fixture(scope="module")
def leadwise():
    return mscnn.load_model("multi_scopic_leadwise").model


def lead_wise_reference(full, x_kept, kept):
    with torch.no_grad():
        return full(zero_fill(x_kept, kept, full.in_channels))[:, full.lead_wise_channels(kept)]


# PhysioNet/CinC Challenge 2021 ("Will Two Do?"): the 12 standard leads in the order the
# challenge's records store them, and its reduced-lead sets. Written out here from the
# challenge's definition, not read back from mscnn.LEAD_SETS.
CINC_12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CINC_SETS = {
    "12": CINC_12,
    "6": ["I", "II", "III", "aVR", "aVL", "aVF"],
    "4": ["I", "II", "III", "V2"],
    "3": ["I", "II", "V2"],
    "2": ["I", "II"],
}
# The same sets as indices into the 12-lead order, counted by hand.
CINC_INDICES = {
    "12": list(range(12)),
    "6": [0, 1, 2, 3, 4, 5],
    "4": [0, 1, 2, 7],
    "3": [0, 1, 7],
    "2": [0, 1],
}


def test_lead_sets_are_the_cinc_2021_sets():
    assert list(LEADS_12) == CINC_12
    assert {k: list(v) for k, v in LEAD_SETS.items()} == CINC_SETS


@pytest.mark.parametrize("lead_set", list(CINC_SETS))
def test_resolve_leads_gives_the_cinc_names_and_indices(lead_set):
    expected = (CINC_SETS[lead_set], CINC_INDICES[lead_set])
    assert mscnn.resolve_leads(lead_set) == expected
    assert mscnn.resolve_leads(int(lead_set)) == expected
    assert mscnn.resolve_leads(",".join(CINC_SETS[lead_set])) == expected
    assert mscnn.resolve_leads(CINC_INDICES[lead_set]) == expected


@pytest.mark.parametrize("lead_set", list(CINC_SETS))
def test_cinc_lead_sets_match_zero_filled_full_model(leadwise, lead_set, rng):
    kept = CINC_INDICES[lead_set]
    variant = derive_variant(leadwise, kept)
    assert variant.in_channels == len(kept) == variant.groups
    assert not variant.training
    x = torch.randn(2, len(kept), SEQ_LEN, generator=rng)
    with torch.no_grad():
        got = variant(x)
    expected = lead_wise_reference(leadwise, x, kept)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-6


def test_lead_indices_of_custom_selections():
    assert mscnn.resolve_leads("V6,I")[1] == [11, 0]
    assert mscnn.resolve_leads(" aVF , V1 ") == (["aVF", "V1"], [5, 6])
    assert mscnn.resolve_leads([0, 7])[0] == ["I", "V2"]
    assert mscnn.resolve_leads(["V2", 3]) == (["V2", "aVR"], [7, 3])
    custom = ["A", "B", "C"]
    assert mscnn.resolve_leads("C,A", available=custom) == (["C", "A"], [2, 0])


@pytest.mark.parametrize(
    "block",
    [
        {"subsample_mode": "conv", "batch_norm": True},
        {"batch_norm": "group_norm"},
        {"activation": "prelu", "kw_activation": {}},
    ],
    ids=["conv_down_bn", "group_norm", "prelu"],
)
def test_variant_of_non_default_lead_wise_models(block, rng):
    """Every tensor with per-lead rows is sliced, including the down-sampling conv and the
    running statistics that torch_ecg's assignment leaves at their defaults."""
    config = copy.deepcopy(dict(mscnn.PRESETS["multi_scopic_leadwise"].config))
    config.update(num_filters=[[24, 24, 48]] * 3, filter_lengths=[[3, 7, 5]] * 3)
    config["block"] = {**config["block"], **block}
    full = MultiScopicCNN(12, **config)
    mscnn.seeded_init(full, seed=3)
    full.eval()
    kept = [11, 2, 7]  # any order, not only the CinC sets
    variant = derive_variant(full, kept)
    x = torch.randn(1, 3, 512, generator=rng)
    with torch.no_grad():
        got = variant(x)
    assert (got - lead_wise_reference(full, x, kept)).abs().max().item() <= 1e-6


def test_running_statistics_matter(leadwise, rng):
    """Weight and bias alone (torch_ecg's assignment) do not give the contract."""
    kept = CINC_INDICES["2"]
    variant = derive_variant(leadwise, kept)
    for module in variant.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.reset_running_stats()
    x = torch.randn(1, 2, SEQ_LEN, generator=rng)
    with torch.no_grad():
        drift = (variant(x) - lead_wise_reference(leadwise, x, kept)).abs().max().item()
    assert drift > 1e-2


def test_groups_one_variant_slices_input_weights(rng):
    full = mscnn.load_model("multi_scopic").model
    kept = CINC_INDICES["3"]
    variant = derive_variant(full, kept)
    assert variant.in_channels == 3 and variant.groups == 1
    x = torch.randn(1, 3, 400, generator=rng)
    with torch.no_grad():
        got = variant(x)
        expected = full(zero_fill(x, kept, 12))
    assert got.shape == expected.shape  # all channels: nothing is lead-specific
    assert (got - expected).abs().max().item() <= 1e-5


def test_variant_does_not_change_the_source(leadwise):
    before = {k: v.clone() for k, v in leadwise.state_dict().items()}
    derive_variant(leadwise, [0, 1])
    assert all(torch.equal(before[k], v) for k, v in leadwise.state_dict().items())


ALL_12 = "I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6"


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ([0, 0, 1], "lead selection lists I more than once"),
        ([1, 0, 1, 0], "lead selection lists I, II more than once"),
        ([0, 12], "lead index 12 is out of range for a 12-lead model (valid: 0..11)"),
        ([-1], "lead index -1 is out of range for a 12-lead model (valid: 0..11)"),
        (
            ["I", "X"],
            f"unknown lead 'X'; this model's leads are: {ALL_12} (or a lead set: 12, 6, 4, 3, 2)",
        ),
        (
            "5",
            f"unknown lead '5'; this model's leads are: {ALL_12} (or a lead set: 12, 6, 4, 3, 2)",
        ),
        ([], "lead selection []: expected a lead-set name (12, 6, 4, 3, 2), lead names or indices"),
        ([True], "lead selection: True is neither a lead name nor an index"),
        ([1.5], "lead selection: 1.5 is neither a lead name nor an index"),
    ],
)
def test_bad_lead_selections(selection, message):
    with pytest.raises(MscnnError) as err:
        mscnn.resolve_leads(selection)
    assert str(err.value) == message


def test_variant_reference_is_the_zero_filled_model(leadwise, rng):
    kept = CINC_INDICES["3"]
    x = torch.randn(1, 3, 300, generator=rng)
    with torch.no_grad():
        got = mscnn.variant_reference(leadwise, x, kept)
        assert torch.equal(got, lead_wise_reference(leadwise, x, kept))
        assert got.shape[1] == 3 * 2304 // 12  # the kept leads' channels only
        mixing = mscnn.load_model("multi_scopic").model.eval()
        assert torch.equal(mscnn.variant_reference(mixing, x, kept), mixing(zero_fill(x, kept, 12)))


def test_whole_model_variants_and_their_refusal(rng):
    """derive_variant takes a whole model (head included) too; a variant is never derived
    again (its dropped leads are folded into constants)."""
    full = mscnn.load_model("leadwise_classifier").model.eval()
    kept = CINC_INDICES["3"]
    variant = derive_variant(full, kept)
    assert variant.in_channels == 3
    x = torch.randn(1, 3, 300, generator=rng)
    with torch.no_grad():
        error = (variant(x) - mscnn.variant_reference(full, x, kept)).abs().max().item()
    assert error <= 1e-5
    with pytest.raises(MscnnError) as err:
        derive_variant(variant, [0])
    assert str(err.value) == (
        "derive_variant: this model is already a reduced-lead variant; derive every variant "
        "from the full model"
    )


def test_only_models_have_variants():
    with pytest.raises(MscnnError) as err:
        derive_variant(torch.nn.Conv1d(12, 12, 3), [0, 1])
    assert str(err.value) == (
        "derive_variant: expected a MultiScopicCNN, ECG_SEQ_LAB_NET or ECG_CRNN, got Conv1d"
    )


def test_bad_variant_requests(leadwise):
    with pytest.raises(MscnnError, match="duplicate"):
        derive_variant(leadwise, [1, 1])
    with pytest.raises(MscnnError, match="out of range"):
        derive_variant(leadwise, [0, 12])
    mixed = MultiScopicCNN(12, **{**mscnn.PRESETS["multi_scopic"].config, "groups": 3})
    with pytest.raises(MscnnError, match="groups = 1 or groups = in_channels"):
        derive_variant(mixed, [0, 1])
    wrong = MultiScopicCNN(2, **{**mscnn.PRESETS["multi_scopic_leadwise"].config, "groups": 2})
    with pytest.raises(MscnnError, match="differs from the source"):
        leadwise.assign_weights_lead_wise(wrong, [0, 1])
    assert LEADS_12[7] == "V2"
