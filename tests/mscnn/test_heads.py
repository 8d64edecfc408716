"""Whole models: torch_ecg's heads on MultiScopicCNN, and their exact reduced-lead variants."""

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mscnn
from mscnn import (
    ECG_CRNN,
    ECG_SEQ_LAB_NET,
    LEAD_SETS,
    MscnnError,
    ReducedLeadModel,
    derive_variant,
    seeded_init,
    variant_reference,
)
from mscnn import data as ecg_data

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch_ecg's imports warn about deprecated torch APIs
    from torch_ecg.model_configs import ECG_CRNN_CONFIG, ECG_SEQ_LAB_NET_CONFIG
    from torch_ecg.models import ECG_CRNN as TorchEcgCRNN
    from torch_ecg.models import ECG_SEQ_LAB_NET as TorchEcgSeqLab

HAVE_CINC = (ecg_data.data_dir() / ecg_data.CINC2021_FILE).is_file()
needs_cinc = pytest.mark.skipif(
    not HAVE_CINC,
    reason=f"no {ecg_data.CINC2021_FILE} in {ecg_data.data_dir()} (set MSCNN_DATA to the "
    "shared/data folder)",
)
CLASSES = ["a", "b", "c"]


def small_leadwise(**changes):
    """The multi_scopic_leadwise layout with 2/4/8 filters per lead: quick to run."""
    config = copy.deepcopy(dict(mscnn.PRESETS["multi_scopic_leadwise"].config))
    config["num_filters"] = [[24, 48, 96]] * 3
    config.update(changes)
    return config


def torch_ecg_config(
    head, attn="se", pool="max", cnn="multi_scopic_leadwise", backbone=None, **changes
):
    """A torch_ecg config object (defaults and all other backbones' configs included)."""
    config = copy.deepcopy(ECG_CRNN_CONFIG if head == "ECG_CRNN" else ECG_SEQ_LAB_NET_CONFIG)
    config.cnn.name = cnn
    config.cnn[cnn] = copy.deepcopy(backbone or small_leadwise())
    config.rnn.name = "none"
    config.attn.name = attn
    config.global_pool = pool if head == "ECG_CRNN" else "none"
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key].update(copy.deepcopy(value))
        else:
            config[key] = value
    return config


def build_both(head, n_leads, config, classes=CLASSES):
    theirs_cls = TorchEcgCRNN if head == "ECG_CRNN" else TorchEcgSeqLab
    theirs = theirs_cls(classes, n_leads, copy.deepcopy(config))
    ours = mscnn.HEADS[head](classes, n_leads, copy.deepcopy(config))
    return ours, theirs


def normalised_error(got, expected):
    """Max abs error over max(1, max |expected|): absolute for logits up to 1."""
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    return ((got - expected).abs().max() / max(1.0, expected.abs().max().item())).item()


# --------------------------------------------------------------------------------------
# torch_ecg's state dicts load strictly and give torch_ecg's logits

TORCH_ECG_CASES = {
    "seq_lab_se": ("ECG_SEQ_LAB_NET", {"attn": "se"}),
    "seq_lab_none": ("ECG_SEQ_LAB_NET", {"attn": "none"}),
    "crnn_se_max": ("ECG_CRNN", {"attn": "se", "pool": "max"}),
    "crnn_se_avg": ("ECG_CRNN", {"attn": "se", "pool": "avg"}),
    "crnn_none_max": ("ECG_CRNN", {"attn": "none", "pool": "max"}),
    "crnn_none_avg": ("ECG_CRNN", {"attn": "none", "pool": "avg"}),
    "seq_lab_recover_length": ("ECG_SEQ_LAB_NET", {"attn": "se", "recover_length": True}),
    "crnn_pool_size_2": ("ECG_CRNN", {"pool": "avg", "global_pool_size": 2}),
    "crnn_clf_prelu_no_bias": (
        "ECG_CRNN",
        {
            "clf": {
                "activation": "prelu",
                "bias": False,
                "out_channels": [32, 16],
                "dropouts": [0.1, 0.3, 0],
            }
        },
    ),
    "seq_lab_se_variant": (
        "ECG_SEQ_LAB_NET",
        {
            "attn": {
                "name": "se",
                "se": {
                    "reduction": 4,
                    "activation": "leaky",
                    "kw_activation": {"negative_slope": 0.2},
                    "bias": False,
                    "dropouts": [0.2, 0.0],
                },
            }
        },
    ),
    "crnn_groups_1": ("ECG_CRNN", {"cnn": "multi_scopic", "backbone": small_leadwise(groups=1)}),
}


def case_config(name):
    head, options = TORCH_ECG_CASES[name]
    options = copy.deepcopy(options)
    attn = options.pop("attn", "se")
    config = torch_ecg_config(head, attn if isinstance(attn, str) else "se", **options)
    if isinstance(attn, dict):
        config.attn.se.update(attn["se"])
    return head, config


@pytest.mark.parametrize("name", list(TORCH_ECG_CASES))
def test_whole_models_match_torch_ecg(name):
    head, config = case_config(name)
    ours, theirs = build_both(head, 12, config)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    seeded_init(theirs, seed=7)  # linear layers and non-trivial running statistics too
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 12, 1000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-6
    assert ours.compute_output_shape(1000, 2) == tuple(expected.shape)
    assert tuple(theirs.compute_output_shape(1000, 2)) == tuple(expected.shape)
    # the canonical config rebuilds the same model, in mscnn and in torch_ecg
    again, theirs_again = build_both(head, 12, ours.config)
    assert again.config == ours.config
    assert {k: v.shape for k, v in theirs_again.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }


def test_forward_gives_logits_not_probabilities():
    _, config = case_config("crnn_none_max")
    model = ECG_CRNN(CLASSES, 12, config).eval()
    seeded_init(model, 1)
    with torch.no_grad():
        out = model(torch.randn(4, 12, 600, generator=torch.Generator().manual_seed(0)))
    assert (out < 0).any() and (out.abs() > 1e-3).all()


# --------------------------------------------------------------------------------------
# Refused and malformed configs: the error names the key and the valid values


def crnn(**changes):
    config = dict(copy.deepcopy(torch_ecg_config("ECG_CRNN")))
    config.update(changes)
    return config


def seq_lab(**changes):
    config = dict(copy.deepcopy(torch_ecg_config("ECG_SEQ_LAB_NET")))
    config.update(changes)
    return config


REFUSALS = {
    "gru": (
        ECG_CRNN,
        crnn(rnn={"name": "gru"}),
        r"config\['rnn'\]\['name'\]: 'gru' is not supported; choose from: none, lstm, linear",
    ),
    "transformer": (
        ECG_CRNN,
        crnn(attn={"name": "transformer"}),
        r"config\['attn'\]\['name'\]: 'transformer' is not supported; choose from: "
        r"none, se, gc, nl",
    ),
    "other_cnn": (
        ECG_CRNN,
        crnn(cnn={"name": "resnet_nature_comm_bottle_neck"}),
        r"config\['cnn'\]\['name'\]: 'resnet_nature_comm_bottle_neck' is not "
        r"supported; choose from: multi_scopic, multi_scopic_leadwise",
    ),
    "no_cnn_name": (
        ECG_CRNN,
        crnn(cnn={"multi_scopic": {}}),
        r"config\['cnn'\]\['name'\]: missing",
    ),
    "no_backbone": (
        ECG_CRNN,
        crnn(cnn={"name": "multi_scopic"}),
        r"config\['cnn'\]\['multi_scopic'\]: missing; give the backbone's config",
    ),
    "bad_backbone": (
        ECG_CRNN,
        crnn(
            cnn={"name": "multi_scopic_leadwise", "multi_scopic_leadwise": small_leadwise(groups=5)}
        ),
        r"config\['cnn'\]\['multi_scopic_leadwise'\]\['groups'\] = 5 does not "
        r"divide in_channels = 12",
    ),
    "pool_attn": (
        ECG_CRNN,
        crnn(global_pool="attn"),
        r"config\['global_pool'\]: 'attn' is not supported for ECG_CRNN; choose from: "
        r"max, avg",
    ),
    "crnn_pool_none": (
        ECG_CRNN,
        crnn(global_pool="none"),
        r"config\['global_pool'\]: 'none' is not supported.*ECG_SEQ_LAB_NET",
    ),
    "seq_lab_pool": (
        ECG_SEQ_LAB_NET,
        seq_lab(global_pool="max"),
        r"config\['global_pool'\]: 'max', but ECG_SEQ_LAB_NET labels every frame",
    ),
    "pool_size": (
        ECG_CRNN,
        crnn(global_pool_size=0),
        r"config\['global_pool_size'\]: expected a positive integer, got 0",
    ),
    "clf_out_channels": (
        ECG_CRNN,
        crnn(clf={**crnn()["clf"], "out_channels": 256}),
        r"config\['clf'\]\['out_channels'\]: expected a list",
    ),
    "clf_dropouts": (
        ECG_SEQ_LAB_NET,
        seq_lab(clf={**seq_lab()["clf"], "dropouts": [0.1, 0.1]}),
        r"config\['clf'\]\['dropouts'\]: 2 rates for 3 linear layers",
    ),
    "clf_rate": (
        ECG_CRNN,
        crnn(clf={**crnn()["clf"], "dropouts": 1.5}),
        r"config\['clf'\]\['dropouts'\]\[0\]: expected a rate in \[0, 1\)",
    ),
    "clf_activation": (
        ECG_CRNN,
        crnn(clf={**crnn()["clf"], "activation": "swishy"}),
        r"config\['clf'\]\['activation'\]: unknown value 'swishy'; choose from: "
        r"relu",
    ),
    "clf_unknown_key": (
        ECG_CRNN,
        crnn(clf={**crnn()["clf"], "units": 3}),
        r"config\['clf'\]: unknown key\(s\) 'units'; valid keys: out_channels",
    ),
    "se_reduction": (
        ECG_CRNN,
        crnn(attn={"name": "se", "se": {"reduction": 100000}}),
        r"config\['attn'\]\['se'\]\['reduction'\]: 100000 leaves no hidden units "
        r"for the backbone's 288 channels",
    ),
    "se_kw_activation": (
        ECG_CRNN,
        crnn(attn={"name": "se", "se": {"activation": "gelu"}}),
        r"config\['attn'\]\['se'\]\['kw_activation'\]: \{'inplace': True\} "
        r"does not fit activation 'gelu'",
    ),
    "se_bias": (
        ECG_CRNN,
        crnn(attn={"name": "se", "se": {**ECG_CRNN_CONFIG.attn.se, "bias": "yes"}}),
        r"config\['attn'\]\['se'\]\['bias'\]: expected true or false",
    ),
    "recover_length": (
        ECG_SEQ_LAB_NET,
        seq_lab(recover_length="yes"),
        r"config\['recover_length'\]: expected true or false, got 'yes'",
    ),
    "crnn_recover_length": (
        ECG_CRNN,
        crnn(recover_length=True),
        r"config: unknown key\(s\) 'recover_length' for ECG_CRNN",
    ),
    "unknown_key": (ECG_SEQ_LAB_NET, seq_lab(lstm={}), r"config: unknown key\(s\) 'lstm'"),
    "not_a_mapping": (ECG_CRNN, None, r"config: expected a torch_ecg ECG_CRNN config mapping"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_configs_name_the_key(name):
    cls, config, message = REFUSALS[name]
    with pytest.raises(MscnnError, match=message):
        cls(CLASSES, 12, config)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "classes: expected a non-empty list"),
        ("abc", "classes: expected a non-empty list"),
        (["a", "a"], "names a class more than once"),
        (["a", 3], "must be a non-empty string"),
    ],
)
def test_bad_classes(classes, message):
    with pytest.raises(MscnnError, match=message):
        ECG_CRNN(classes, 12, crnn())


def test_seq_lab_accepts_the_torch_ecg_default_shape():
    """torch_ecg's own ECG_SEQ_LAB_NET_CONFIG object, with rnn none: every other backbone
    and attention sub-config in it is ignored, as torch_ecg ignores it."""
    config = copy.deepcopy(ECG_SEQ_LAB_NET_CONFIG)
    config.rnn.name = "none"
    model = ECG_SEQ_LAB_NET(["N"], 1, config)
    assert model.config["attn"]["name"] == "se" and model.config["cnn"]["name"] == "multi_scopic"
    assert set(model.config["cnn"]) == {"name", "multi_scopic"}


# --------------------------------------------------------------------------------------
# The interface the compile pipeline reads


def torch_macs(model, seq_len):
    """Convolution and linear-layer MACs as torch's FLOP counter sees them (2 per MAC)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, model.in_channels, seq_len))
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert ops <= {"aten.convolution", "aten.addmm", "aten.mm", "aten.bmm"}, ops
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    ("preset", "shape", "task", "reduction"),
    [
        ("cpsc2019_qrs", (1, 250, 1), "qrs_detection", 8),
        ("leadwise_classifier", (1, 8), "classification", None),
    ],
)
def test_whole_model_presets_interface(preset, shape, task, reduction):
    p = mscnn.PRESETS[preset]
    model = mscnn.load_model(preset).model
    assert (model.head, model.task, model.reduction) == (p.head, task, reduction)
    assert (p.task, p.head) == (task, type(model).__name__)
    assert model.classes == list(p.classes) and model.in_channels == len(p.leads)
    assert model.is_lead_wise and model.cnn.is_lead_wise  # 1 lead: trivially lead-wise
    assert json.loads(json.dumps(model.config)) == model.config
    rebuilt = type(model)(model.classes, model.in_channels, model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert model.num_parameters == sum(p.numel() for p in model.parameters())
    assert model.compute_output_shape(2000, 1) == shape
    assert model.receptive_field() == 1984 and model.receptive_field(500) == pytest.approx(3.968)
    with torch.no_grad():
        assert model(torch.zeros(1, model.in_channels, 2000)).shape == shape
    assert model.count_macs(2000) == torch_macs(model, 2000)
    assert model.count_macs(2000, batch_size=3) == 3 * model.count_macs(2000)


def test_backbone_says_it_is_a_feature_extractor():
    model = mscnn.load_model("cpsc2019").model
    assert (model.task, model.head, model.classes) == ("features", None, None)


def test_recover_length_gives_one_logit_per_sample():
    _, config = case_config("seq_lab_recover_length")
    model = ECG_SEQ_LAB_NET(CLASSES, 12, config).eval()
    assert model.reduction == 1
    with torch.no_grad():
        out = model(torch.randn(1, 12, 999))
    assert out.shape == (1, 999, 3) == model.compute_output_shape(999, 1)


def test_whole_model_input_checks():
    model = mscnn.load_model("cpsc2019_qrs").model
    with pytest.raises(MscnnError, match=r"expected \(batch, 1 leads, samples\)"):
        model(torch.zeros(1, 2, 500))
    with pytest.raises(MscnnError, match="seq_len 4 is too short"):
        model.compute_output_shape(4)


# --------------------------------------------------------------------------------------
# Reduced-lead variants: variant(x[:, kept]) == full(zero_fill(x)), every logit


@pytest.fixture(scope="module")
def cinc_records():
    """Two real 12-lead records (mV), 4 s each: non-trivial amplitudes in every lead."""
    records = ecg_data.cinc2021_records()
    return torch.from_numpy(np.ascontiguousarray(records.signals[[3, 17], :, :2000]))


@pytest.fixture(scope="module")
def classifier():
    return mscnn.load_model("leadwise_classifier", seed=5).model


def check_contract(full, x, kept):
    variant = derive_variant(full, kept)
    assert not variant.training and variant.in_channels == len(kept)
    with torch.no_grad():
        got = variant(x[:, kept])
        expected = variant_reference(full, x[:, kept], kept)
    assert normalised_error(got, expected) <= 1e-6
    assert variant.compute_output_shape(x.shape[-1], x.shape[0]) == tuple(got.shape)
    return variant, got, expected


@needs_cinc
@pytest.mark.parametrize("lead_set", list(LEAD_SETS))
def test_leadwise_classifier_variants_on_real_records(classifier, cinc_records, lead_set):
    kept = mscnn.resolve_leads(lead_set)[1]
    variant, got, _ = check_contract(classifier, cinc_records, kept)
    assert isinstance(variant, ReducedLeadModel)
    assert (variant.head, variant.task, variant.classes) == (
        "ECG_CRNN",
        "classification",
        classifier.classes,
    )
    if len(kept) < 12:  # the dropped leads change the logits: the test can see a fold error
        with torch.no_grad():
            plain = classifier(cinc_records)
        assert (plain - got).abs().max() > 1e-3
        assert variant.num_parameters < classifier.num_parameters


SMALL_HEADS = {
    "seq_lab_se": ("ECG_SEQ_LAB_NET", "se", "max", {}),
    "seq_lab_none": ("ECG_SEQ_LAB_NET", "none", "max", {}),
    "seq_lab_recover_length": ("ECG_SEQ_LAB_NET", "se", "max", {"recover_length": True}),
    "crnn_se_avg": ("ECG_CRNN", "se", "avg", {}),
    "crnn_none_max": ("ECG_CRNN", "none", "max", {}),
    "crnn_none_avg_pool_2": ("ECG_CRNN", "none", "avg", {"global_pool_size": 2}),
    "crnn_se_max_pool_3": ("ECG_CRNN", "se", "max", {"global_pool_size": 3}),
}


@pytest.fixture(scope="module")
def small_heads():
    models = {}
    for name, (head, attn, pool, extra) in SMALL_HEADS.items():
        model = mscnn.HEADS[head](CLASSES, 12, torch_ecg_config(head, attn, pool, **extra))
        seeded_init(model, seed=len(name))
        models[name] = model.eval()
    return models


@needs_cinc
@pytest.mark.parametrize("lead_set", list(LEAD_SETS))
@pytest.mark.parametrize("name", list(SMALL_HEADS))
def test_head_variants_on_real_records(small_heads, cinc_records, name, lead_set):
    """Every head kind, every CinC lead set, at an even and an odd length (which samples
    the dropped leads' edge effects fall on depends on the length)."""
    kept = mscnn.resolve_leads(lead_set)[1]
    for samples in (2000, 1203):
        check_contract(small_heads[name], cinc_records[..., :samples], kept)


def test_variant_in_any_lead_order(small_heads, rng):
    x = torch.randn(2, 12, 800, generator=rng)
    for name in ("seq_lab_se", "crnn_se_max_pool_3"):
        check_contract(small_heads[name], x, [11, 2, 7])
        check_contract(small_heads[name], x, list(range(12))[::-1])  # all leads, reordered


def test_folded_constants_matter(small_heads, rng):
    """Leaving the dropped leads' features out (as if they were zero) breaks the contract."""
    full = small_heads["crnn_se_avg"]
    kept = [0, 1]
    variant = derive_variant(full, kept)
    x = torch.randn(2, 2, 800, generator=rng)
    variant._fold = lambda seq_len: {}
    with torch.no_grad():
        drift = normalised_error(variant(x), variant_reference(full, x, kept))
    assert drift > 1e-3


def test_exported_variant_runs_only_the_kept_leads(small_heads, rng):
    """A trace (what the ONNX export records) holds the kept leads' convs and takes the
    dropped leads' contribution as constants, even when traced first."""
    full = small_heads["seq_lab_se"]
    kept = [0, 1, 7]
    variant = derive_variant(full, kept)
    x = torch.randn(1, 3, 640, generator=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constants
        traced = torch.jit.trace(variant, (x,), check_trace=False)
        backbone = torch.jit.trace(variant.cnn, (x,), check_trace=False)

    def convs(module):
        return sum(n.kind() == "aten::_convolution" for n in module.inlined_graph.nodes())

    assert convs(traced) == convs(backbone) == 18  # 3 branches x (1 + 2 + 3) convs
    with torch.no_grad():
        assert normalised_error(traced(x), variant_reference(full, x, kept)) <= 1e-6


def test_variant_interface_and_mode(small_heads):
    full = small_heads["crnn_se_avg"]
    variant = derive_variant(full.train(), [0, 1, 7])
    full.eval()
    assert variant.training and not variant.zero_leads.training  # constants: eval mode
    variant.eval()
    assert (variant.lead_indices, variant.full_leads) == ((0, 1, 7), 12)
    assert variant.config == full.config and json.dumps(variant.config)
    assert variant.is_lead_wise and variant.reduction is None
    assert variant.receptive_field() == full.receptive_field()
    assert variant.count_macs(1000) < full.count_macs(1000)
    seq = derive_variant(small_heads["seq_lab_none"], [0, 1])
    assert seq.reduction == 8 and seq.compute_output_shape(1000, 2) == (2, 125, 3)
    for model in (variant, derive_variant(small_heads["seq_lab_se"], [5, 9])):
        with torch.no_grad():
            model(torch.zeros(1, model.in_channels, 1000))  # folds the constants for 1000
        assert model.count_macs(1000) == torch_macs(model, 1000)


def test_groups_one_whole_model_variant(rng):
    """A backbone that mixes leads in its first conv: the variant is the same class with
    the kept leads' input weights; the contract is the same."""
    _, config = case_config("crnn_groups_1")
    full = ECG_CRNN(CLASSES, 12, config)
    seeded_init(full, 4)
    full.eval()
    variant, _, _ = check_contract(full, torch.randn(2, 12, 700, generator=rng), [0, 1, 7])
    assert type(variant) is ECG_CRNN and variant.in_channels == 3
    assert variant.config == full.config


def test_variant_refusals(small_heads):
    full = small_heads["seq_lab_none"]
    variant = derive_variant(full, [0, 1])
    with pytest.raises(MscnnError, match="already a reduced-lead variant"):
        derive_variant(variant, [0])
    with pytest.raises(MscnnError, match="lead index 12 is out of range for a 12-lead model"):
        derive_variant(full, [0, 12])
    with pytest.raises(MscnnError, match="duplicate index"):
        derive_variant(full, [1, 1])
    config = torch_ecg_config("ECG_CRNN", backbone=small_leadwise(groups=4), cnn="multi_scopic")
    with pytest.raises(MscnnError, match="groups = 1 or groups = in_channels.*groups = 4"):
        derive_variant(ECG_CRNN(CLASSES, 12, config), [0, 1])
    with pytest.raises(MscnnError, match="save the full model"):
        mscnn.save_checkpoint("unused.pt", variant, leads=["I", "II"], fs=500)
