"""A checkpoint that carries its config builds as saved: no preset needed, and a preset
given only checks it, naming the field that differs."""

import copy

import pytest

import mscnn
from compile.cli import main
from deploy import load_bundle


@pytest.fixture(scope="module")
def se_checkpoint(tmp_path_factory):
    """A whole torch_ecg seq-lab model with SE attention (which no preset is), saved by
    mscnn.save_checkpoint with its leads and rate."""
    base = mscnn.load_model("cpsc2019_qrs")
    config = copy.deepcopy(base.model.config)
    config["attn"] = {"name": "se", "reduction": 8}
    model = mscnn.build_model("ECG_SEQ_LAB_NET", 1, config, base.model.classes)
    mscnn.seeded_init(model, 3)
    path = tmp_path_factory.mktemp("ckpt") / "se.pt"
    return mscnn.save_checkpoint(path, model.eval(), leads=base.leads, fs=base.fs)


@pytest.mark.slow
def test_a_saved_whole_model_builds_with_no_preset_and_passes_parity(se_checkpoint, tmp_path):
    code = main(["build", "--checkpoint", str(se_checkpoint), "--targets", "x86_64",
                 "--out", str(tmp_path), "--quiet"])  # fmt: skip
    assert code == 0
    bundle = load_bundle(tmp_path / "x86_64" / "custom-1lead")
    m = bundle.manifest
    assert m.model.head == "ECG_SEQ_LAB_NET" and m.model.config["attn"]["name"] == "se"
    assert m.parity.tvm.passed and m.detect is not None


def test_a_preset_that_does_not_match_names_the_field(se_checkpoint, tmp_path, capsys):
    code = main(["build", "--checkpoint", str(se_checkpoint), "--preset", "cpsc2019_qrs",
                 "--targets", "x86_64", "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "attn.name: se vs none" in err and "with no --preset" in err
    assert "Traceback" not in err and not (tmp_path / "x86_64").exists()


def test_a_head_is_dropped_only_when_asked(tmp_path, capsys):
    """A whole model's bare state dict given with a backbone preset: refused, naming the
    head; with --backbone-only the plan holds the backbone alone."""
    import torch

    from compile.matrix import Request, plan

    whole = mscnn.load_model("cpsc2019_qrs").model
    path = tmp_path / "whole.pth"
    torch.save(whole.state_dict(), path)
    code = main(["build", "--preset", "cpsc2019", "--checkpoint", str(path), "--targets",
                 "x86_64", "--out", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--backbone-only" in err and "clf" in err
    planned = plan(Request("cpsc2019", path, ["x86_64"], backbone_only=True))
    assert planned.loaded.model.head is None
    assert planned.loaded.model.num_parameters == whole.cnn.num_parameters
