"""Checkpoints round-trip; bare and torch_ecg state dicts load; bad files are refused."""

import pickle

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


def test_torch_ecg_full_model_state_dict(tmp_path, cpsc):
    """ECG_SEQ_LAB_NET keeps MultiScopicCNN as `cnn`; its heads are not ours to compile."""
    state = {f"cnn.{k}": v for k, v in cpsc.model.state_dict().items()}
    state["rnn.lstm.weight_ih_l0"] = torch.zeros(4, 4)
    state["clf.linear.weight"] = torch.zeros(2, 4)
    torch.save({"model_state_dict": state}, tmp_path / "full.pth")
    loaded = load_checkpoint(tmp_path / "full.pth", preset="cpsc2019")
    assert outputs_equal(loaded.model, cpsc.model)


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
    with pytest.raises(MscnnError, match=r"missing 1: branches\.branch_2\.block_2\.bn\.running_var"):
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
