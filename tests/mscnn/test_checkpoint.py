"""Checkpoints round-trip; bare and torch_ecg state dicts load; bad files are refused."""

import pickle
import re

import pytest
import torch

import mscnn
from mscnn import MscnnError, load_checkpoint, load_model, save_checkpoint


@pytest.fixture(scope="module")
def cpsc():
    return load_model("cpsc2019", seed=11)


def outputs_equal(a, b):
    x = torch.randn(1, a.in_channels, 500, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("preset", sorted(set(mscnn.PRESETS) - {"cpsc2019_qrs"}))
def test_a_seeded_preset_is_the_same_model_whatever_the_global_rng(preset):
    """A seeded preset's "seeded initialisation (seed 0)" names every weight: an LSTM's
    too (its constructor draws from the global RNG, which once left the CRNN presets'
    recurrent weights different in every process)."""
    torch.manual_seed(1)
    first = load_model(preset, seed=0).model.state_dict()
    torch.manual_seed(2)
    again = load_model(preset, seed=0).model.state_dict()
    other = load_model(preset, seed=1).model.state_dict()
    for name, value in first.items():
        assert torch.equal(value, again[name]), name
        if value.is_floating_point() and value.numel() > 1:
            assert not torch.equal(value, other[name]), f"{name} ignores the seed"


def test_round_trip(tmp_path, cpsc):
    path = save_checkpoint(
        tmp_path / "m.pt", cpsc.model, leads=cpsc.leads, fs=cpsc.fs, preset="cpsc2019"
    )
    loaded = load_checkpoint(path)
    assert (loaded.preset, loaded.leads, loaded.fs) == ("cpsc2019", ("ECG",), 500)
    assert loaded.model.config == cpsc.model.config
    assert outputs_equal(loaded.model, cpsc.model)
    assert not loaded.model.training
    assert load_model("cpsc2019", checkpoint=path).model.config == cpsc.model.config


def test_round_trip_of_a_custom_config(tmp_path):
    config = {**mscnn.PRESETS["cpsc2019"].config, "filter_lengths": [[5, 9, 3]] * 3}
    model = mscnn.MultiScopicCNN(2, **config)
    mscnn.seeded_init(model, 2)
    path = save_checkpoint(tmp_path / "c.pt", model.eval(), leads=["I", "II"], fs=250)
    loaded = load_checkpoint(path)
    assert loaded.preset is None and loaded.fs == 250 and loaded.leads == ("I", "II")
    assert outputs_equal(loaded.model, model)


def test_bare_state_dict_with_preset(tmp_path, cpsc):
    torch.save(cpsc.model.state_dict(), tmp_path / "sd.pth")
    loaded = load_checkpoint(tmp_path / "sd.pth", preset="cpsc2019")
    assert outputs_equal(loaded.model, cpsc.model)
    with pytest.raises(MscnnError, match="bare state dict holds no config"):
        load_checkpoint(tmp_path / "sd.pth")


def test_torch_ecg_full_model_state_dict(tmp_path, cpsc, caplog):
    """ECG_SEQ_LAB_NET keeps MultiScopicCNN as `cnn`: with a backbone preset its head is
    dropped only when asked for (backbone_only=True), never silently."""
    state = {f"cnn.{k}": v for k, v in cpsc.model.state_dict().items()}
    state["rnn.lstm.weight_ih_l0"] = torch.zeros(4, 4)
    state["clf.linear.weight"] = torch.zeros(2, 4)
    torch.save({"model_state_dict": state}, tmp_path / "full.pth")
    with caplog.at_level("INFO", logger="mscnn.checkpoint"):
        loaded = load_checkpoint(tmp_path / "full.pth", preset="cpsc2019", backbone_only=True)
    assert outputs_equal(loaded.model, cpsc.model)
    assert "dropping clf.*, rnn.*" in caplog.text
    loaded = load_model("cpsc2019", tmp_path / "full.pth", backbone_only=True)
    assert outputs_equal(loaded.model, cpsc.model)


def test_dropping_a_whole_models_head_is_an_error(tmp_path, qrs):
    """A whole torch_ecg model given with its backbone's preset: the head (attn, clf)
    would be lost, so the error names it and both ways out."""
    config = {**mscnn.PRESETS["cpsc2019_qrs"].config, "attn": {"name": "se", "se": {}}}
    whole = mscnn.ECG_SEQ_LAB_NET(["N"], 1, config)
    torch.save(whole.state_dict(), tmp_path / "whole.pth")
    with pytest.raises(MscnnError) as info:
        load_checkpoint(tmp_path / "whole.pth", preset="cpsc2019")
    message = str(info.value)
    assert "whole model's state dict (backbone under 'cnn.', head attn.*, clf.*)" in message
    assert "preset 'cpsc2019' is the backbone alone" in message
    assert "load it as the whole model it is (preset 'cpsc2019_qrs'" in message
    assert (
        "pass backbone_only=True (compile build --backbone-only) to drop the head on purpose"
        in message
    )
    with pytest.raises(MscnnError, match="attn.*clf.*backbone_only=True"):
        load_model("cpsc2019", tmp_path / "whole.pth")  # compile's path: load_model
    kept = load_checkpoint(tmp_path / "whole.pth", preset="cpsc2019", backbone_only=True)
    assert type(kept.model) is mscnn.MultiScopicCNN
    assert all(
        torch.equal(v, whole.cnn.state_dict()[k]) for k, v in kept.model.state_dict().items()
    )
    # nested one level deeper (a wrapper's `model.`): the prefixes say where the head is
    torch.save({f"model.{k}": v for k, v in whole.state_dict().items()}, tmp_path / "deep.pth")
    with pytest.raises(MscnnError, match=r"under 'model\.cnn\.', head model\.attn\.\*, model\.clf"):
        load_checkpoint(tmp_path / "deep.pth", preset="cpsc2019")
    # backbone_only keeps a whole-model preset's head: it is refused, not ignored
    torch.save(qrs.model.state_dict(), tmp_path / "qrs.pth")
    with pytest.raises(MscnnError, match="preset 'cpsc2019_qrs' is a whole model.*cpsc2019"):
        load_checkpoint(tmp_path / "qrs.pth", preset="cpsc2019_qrs", backbone_only=True)
    ours = save_checkpoint(tmp_path / "ours.pt", qrs.model, leads=qrs.leads, fs=500)
    with pytest.raises(MscnnError, match=r"bare \(torch_ecg\) state dict.*\.model\.cnn"):
        load_checkpoint(ours, backbone_only=True)


def test_checkpoint_for_another_config(tmp_path, cpsc):
    torch.save(cpsc.model.state_dict(), tmp_path / "sd.pth")
    with pytest.raises(MscnnError, match=r"does not fit preset 'multi_scopic'.*wrong shape"):
        load_checkpoint(tmp_path / "sd.pth", preset="multi_scopic")
    path = save_checkpoint(tmp_path / "m.pt", cpsc.model, leads=cpsc.leads, fs=500)
    with pytest.raises(MscnnError, match="different model than preset 'multi_scopic_leadwise'"):
        load_checkpoint(path, preset="multi_scopic_leadwise")
    partial = dict(cpsc.model.state_dict())
    partial.pop("branches.branch_2.block_2.bn.running_var")
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(
        MscnnError, match=r"missing 1: branches\.branch_2\.block_2\.bn\.running_var"
    ):
        load_checkpoint(tmp_path / "partial.pth", preset="cpsc2019")


class NotATensor:
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"this is a text file\n", "not a readable PyTorch checkpoint"),
        (pickle.dumps({"a": NotATensor()}), "Python objects beyond tensors"),
        (None, "neither an mscnn-edge checkpoint nor a state dict"),
    ],
    ids=["empty", "text", "pickled_object", "list"],
)
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    with pytest.raises(MscnnError, match=message):
        load_checkpoint(path, preset="cpsc2019")


def test_pickled_code_is_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(MscnnError, match="Python objects"):
        load_checkpoint(tmp_path / "evil.pt", preset="cpsc2019")
    assert not marker.exists()


def test_truncated_and_missing_files(tmp_path, cpsc):
    path = save_checkpoint(tmp_path / "m.pt", cpsc.model, leads=cpsc.leads, fs=500)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MscnnError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)
    with pytest.raises(MscnnError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_version_nan_weights_and_bad_fields(tmp_path, cpsc):
    path = save_checkpoint(tmp_path / "m.pt", cpsc.model, leads=cpsc.leads, fs=500)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": 99}, tmp_path / "v.pt")
    with pytest.raises(MscnnError, match="format version 99"):
        load_checkpoint(tmp_path / "v.pt")
    bad = dict(payload["state_dict"])
    bad["branches.branch_0.block_0.bn.weight"] = torch.full_like(
        bad["branches.branch_0.block_0.bn.weight"], float("nan")
    )
    torch.save({**payload, "state_dict": bad}, tmp_path / "nan.pt")
    with pytest.raises(MscnnError, match="NaN or Inf"):
        load_checkpoint(tmp_path / "nan.pt")
    torch.save({**payload, "leads": ["I", "II"]}, tmp_path / "l.pt")
    with pytest.raises(MscnnError, match="2 lead names for 1 input channels"):
        load_checkpoint(tmp_path / "l.pt")
    no_config = {k: v for k, v in payload.items() if k != "config"}
    torch.save(no_config, tmp_path / "nc.pt")
    with pytest.raises(MscnnError, match="missing field"):
        load_checkpoint(tmp_path / "nc.pt")
    torch.save({**payload, "config": {**payload["config"], "groups": 5}}, tmp_path / "g.pt")
    with pytest.raises(MscnnError, match=r"config\['groups'\] = 5 does not divide"):
        load_checkpoint(tmp_path / "g.pt")


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(MscnnError, match="unknown preset 'nope'; choose from: cpsc2019, "):
        load_model("nope")


# --------------------------------------------------------------------------------------
# Whole models (ECG_SEQ_LAB_NET, ECG_CRNN)


@pytest.fixture(scope="module")
def qrs():
    return load_model("cpsc2019_qrs", seed=3)


def small_crnn(leads=2):
    """A lead-wise ECG_CRNN small enough to save and load quickly."""
    backbone = {
        **mscnn.PRESETS["cpsc2019"].config,
        "groups": leads,
        "num_filters": [[2 * leads, 4 * leads, 4 * leads]] * 3,
    }
    config = {
        "cnn": {"name": "multi_scopic_leadwise", "multi_scopic_leadwise": backbone},
        "rnn": {"name": "none"},
        "attn": {"name": "se", "se": {"reduction": 4}},
        "global_pool": "avg",
        "clf": {"out_channels": [16], "activation": "relu", "bias": True, "dropouts": 0.1},
    }
    model = mscnn.ECG_CRNN(["AF", "SR", "RBBB"], leads, config)
    mscnn.seeded_init(model, 6)
    return model.eval()


def test_whole_model_round_trip(tmp_path, qrs):
    metadata = {"trained_on": "cpsc2019_sample", "epochs": 3, "score": 0.97, "seeds": [0, 1]}
    path = save_checkpoint(
        tmp_path / "qrs.pt",
        qrs.model,
        leads=qrs.leads,
        fs=qrs.fs,
        preset="cpsc2019_qrs",
        metadata=metadata,
    )
    payload = torch.load(path, weights_only=True)
    assert (payload["version"], payload["head"], payload["classes"]) == (
        2,
        "ECG_SEQ_LAB_NET",
        ["N"],
    )
    loaded = load_checkpoint(path)
    assert type(loaded.model) is mscnn.ECG_SEQ_LAB_NET and not loaded.model.training
    assert (loaded.preset, loaded.leads, loaded.fs) == ("cpsc2019_qrs", ("ECG",), 500)
    assert loaded.model.config == qrs.model.config and loaded.model.classes == ["N"]
    assert loaded.metadata == metadata
    assert outputs_equal(loaded.model, qrs.model)
    assert outputs_equal(load_model("cpsc2019_qrs", checkpoint=path).model, qrs.model)
    with pytest.raises(
        MscnnError,
        match=r"different model than preset 'cpsc2019': head: ECG_SEQ_LAB_NET vs none\. ",
    ):
        load_checkpoint(path, preset="cpsc2019")


def test_custom_whole_model_round_trip(tmp_path):
    model = small_crnn()
    path = save_checkpoint(tmp_path / "crnn.pt", model, leads=["I", "II"], fs=500)
    loaded = load_checkpoint(path)
    assert type(loaded.model) is mscnn.ECG_CRNN and loaded.preset is None
    assert loaded.model.classes == ["AF", "SR", "RBBB"] and loaded.model.config == model.config
    assert outputs_equal(loaded.model, model)
    with pytest.raises(MscnnError, match="different model than preset 'leadwise_classifier'"):
        load_checkpoint(path, preset="leadwise_classifier")


def test_version_1_backbone_checkpoints_still_load(tmp_path, cpsc):
    payload = {
        "format": "mscnn-edge/checkpoint",
        "version": 1,
        "preset": "cpsc2019",
        "in_channels": 1,
        "config": cpsc.model.config,
        "leads": ["ECG"],
        "fs": 500,
        "state_dict": cpsc.model.state_dict(),
    }
    torch.save(payload, tmp_path / "v1.pt")
    loaded = load_checkpoint(tmp_path / "v1.pt", preset="cpsc2019")
    assert type(loaded.model) is mscnn.MultiScopicCNN and loaded.metadata == {}
    assert outputs_equal(loaded.model, cpsc.model)


def test_checkpoint_of_another_head_names_the_keys(tmp_path, qrs):
    torch.save(qrs.model.state_dict(), tmp_path / "qrs.pth")
    with pytest.raises(MscnnError) as info:
        load_checkpoint(tmp_path / "qrs.pth", preset="leadwise_classifier")
    message = str(info.value)
    assert "does not fit preset 'leadwise_classifier' (ECG_CRNN, 12 leads, groups 12, 8 " in message
    assert (
        "missing 4: attn.fc.0.lin_0.weight, attn.fc.0.lin_0.bias, attn.fc.0.lin_1.weight, ..."
    ) in message
    assert "unexpected 2: clf.lin_2.weight, clf.lin_2.bias;" in message
    assert re.search(
        r"wrong shape \d+: cnn\.branches\.branch_0\.block_0\.ca_0\.conv1d\.weight "
        r"\(file \(16, 1, 11\), model \(192, 1, 11\)\)",
        message,
    )
    # a detector trained with SE attention is not the preset's (no attention)
    config = {**mscnn.PRESETS["cpsc2019_qrs"].config, "attn": {"name": "se", "se": {}}}
    torch.save(mscnn.ECG_SEQ_LAB_NET(["N"], 1, config).state_dict(), tmp_path / "se.pth")
    with pytest.raises(MscnnError, match=r"unexpected 4: attn\.fc\.0\.lin_0\.weight, "):
        load_checkpoint(tmp_path / "se.pth", preset="cpsc2019_qrs")
    # a bare backbone's state dict is not a whole model's
    torch.save(load_model("cpsc2019").model.state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(MscnnError, match=r"missing 87: cnn\.branches.*unexpected 81: branches\."):
        load_checkpoint(tmp_path / "backbone.pth", preset="cpsc2019_qrs")


def test_whole_model_checkpoint_refusals(tmp_path, qrs):
    with pytest.raises(MscnnError, match=r"metadata\['run'\]: object values cannot be stored"):
        save_checkpoint(
            tmp_path / "m.pt", qrs.model, leads=["ECG"], fs=500, metadata={"run": object()}
        )
    path = save_checkpoint(tmp_path / "m.pt", qrs.model, leads=["ECG"], fs=500)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "head": "ECG_UNET"}, tmp_path / "h.pt")
    with pytest.raises(MscnnError, match="unknown head 'ECG_UNET'; this mscnn-edge builds"):
        load_checkpoint(tmp_path / "h.pt")
    torch.save({**payload, "classes": []}, tmp_path / "c.pt")
    with pytest.raises(MscnnError, match="classes: expected a non-empty list"):
        load_checkpoint(tmp_path / "c.pt")
    no_head = {k: v for k, v in payload.items() if k != "head"}
    torch.save(no_head, tmp_path / "nh.pt")
    with pytest.raises(MscnnError, match="missing field"):
        load_checkpoint(tmp_path / "nh.pt")


def test_loading_leaves_the_callers_rng_and_takes_str_subclasses(tmp_path):
    """Building layers draws from torch's global RNG: loading must not move it; and
    metadata of a str subclass (torch.__version__) is stored as a plain str."""
    loaded = mscnn.load_model("cpsc2019")
    path = mscnn.save_checkpoint(
        tmp_path / "m.pt",
        loaded.model,
        leads=loaded.leads,
        fs=loaded.fs,
        preset="cpsc2019",
        metadata={"torch": torch.__version__},
    )
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    again = mscnn.load_checkpoint(path)
    assert torch.equal(torch.rand(3), expected)
    assert again.metadata["torch"] == str(torch.__version__)
    assert type(again.metadata["torch"]) is str
