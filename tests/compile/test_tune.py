"""Tuning: the search space, the records (written, validated, applied by builds) and
measuring on a device through TVM's RPC, proven on loopback."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant
from compile.errors import CompileError
from compile.export import export_onnx
from compile.lowering.records import FORMAT, RECORDS_DIR, VERSION, load_records, write_records
from compile.lowering.schedule import conv_shape, default_tile, tile_choices
from compile.lowering.tune import conv_kernels, tune
from deploy import DeployError, Predictor, compare
from deploy.remote import Device, Rpc

X86 = TARGETS["x86_64"]
CPU_TARGETS = [t for t in TARGETS.values() if t.tile is not None]

# Two branches of one conv each: two kernels (dilation 1 and 2), 16 channels.
SMALL = {
    **mscnn.PRESETS["cpsc2019"].config,
    "scopes": [[[1]], [[2]]],
    "num_filters": [[16], [16]],
    "filter_lengths": [[5], [5]],
    "subsample_lengths": [2, 2],
    "dropouts": 0,
}
SMALL_SAMPLES = 240


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = mscnn.MultiScopicCNN(1, **SMALL)
    mscnn.seeded_init(model, 5)
    loaded = mscnn.LoadedModel(model.eval(), None, ("ECG",), 500, "small test model")
    path = export_onnx(
        model.eval(),
        tmp_path_factory.mktemp("small") / "small.onnx",
        batch=1,
        samples=SMALL_SAMPLES,
    )
    return loaded, {"1lead": (path, (1, 1, SMALL_SAMPLES))}


def runs_like_pytorch(bundle, model):
    """The bundle, loaded as a device loads it, against PyTorch on an input of its own
    (not the golden data the build already checked, and never the manifest's verdict)."""
    predictor = Predictor(bundle.path)
    x = np.random.default_rng(11).standard_normal(predictor.bundle.input_shape, np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    return compare(predictor(x), expected)


def records_json(of, records, **changes):
    data = {"format": FORMAT, "version": VERSION, "target": of.name, "records": records}
    return json.dumps({**data, **changes})


@pytest.mark.parametrize("target", CPU_TARGETS, ids=lambda t: t.name)
def test_tile_space_has_no_tails_fits_registers_and_holds_the_default(target, tmp_path):
    model = mscnn.load_model("multi_scopic_leadwise").model
    path = export_onnx(model, tmp_path / "m.onnx", batch=1, samples=5000)
    kernels = conv_kernels({"12lead": (path, (1, 12, 5000))}, target)
    assert len(kernels) == 18
    tile = target.tile
    for kernel in kernels:
        t_tiles, f_vecs = tile_choices(kernel.func, tile)
        channels, length = conv_shape(kernel.func)
        assert all(length % t == 0 for t in t_tiles)
        assert all((channels // tile.vec) % f == 0 for f in f_vecs)
        assert max(t_tiles) + 2 <= tile.registers and 2 * max(f_vecs) + 2 <= tile.registers
        t, f = default_tile(kernel.func, tile)
        assert t in t_tiles and f in f_vecs
        assert len(t_tiles) * len(f_vecs) >= 4  # a real choice on every kernel


@pytest.mark.slow
def test_tuned_records_are_written_and_applied_by_builds(small, tmp_path):
    loaded, models = small
    records, summary = tune(X86, models, tmp_path / "work", threads=2, max_trials=3)
    assert summary["kernels"] == summary["tuned"] == 2 == len(records)
    # The empty stand-in for TVM's tensor intrinsics (a 28 s import our space never uses)
    # is gone again, so a later import in this process gets the real package.
    intrinsics = sys.modules.get("tvm.s_tir.tensor_intrin")
    assert intrinsics is None or hasattr(intrinsics, "__path__")
    kernels = {k.key: k for k in conv_kernels(models, X86)}
    assert {r["key"] for r in records} == set(kernels)
    for r in records:
        # The record's tile is a point of its own kernel's space (the search's decisions
        # decoded in the right order), measured, with the default tile's time beside it.
        kernel = kernels[r["key"]]
        t_tiles, f_vecs = tile_choices(kernel.func, X86.tile)
        assert r["t_tile"] in t_tiles and r["f_vecs"] in f_vecs, r
        assert r["kernel"] == kernel.description and "conv1d 1->16 ch" in r["kernel"]
        assert r["us"] > 0 and r["default_us"] > 0
        if (r["t_tile"], r["f_vecs"]) == default_tile(kernel.func, X86.tile):
            assert r["us"] == r["default_us"]  # one timing, recorded twice
        assert 1 <= r["candidates"] <= 3 and r["models"] == ["1lead"]
    path = write_records(
        tmp_path / "rec" / X86.name / "small.b1x240.json",
        X86,
        {"preset": "small"},
        records,
        summary,
    )
    tiles, files = load_records(X86, tmp_path / "rec")
    assert len(tiles) == 2 and files[0]["file"] == f"{X86.name}/{path.name}"

    variant = resolve_variant(loaded, "1")
    options = BuildOptions(samples=SMALL_SAMPLES, records_dir=tmp_path / "rec")
    bundle = build(loaded, X86, variant, tmp_path / "tuned", options)
    tuning = bundle.manifest.schedule.tuning
    assert tuning["conv_tuned"] == 2 and tuning["conv_default_tile"] == 0
    assert tuning["records"] == files
    assert runs_like_pytorch(bundle, loaded.model).passed
    plain = build(
        loaded, X86, variant, tmp_path / "plain", BuildOptions(samples=SMALL_SAMPLES, tuning=False)
    )
    assert plain.manifest.schedule.tuning is None


def test_a_record_decides_the_generated_code(small, tmp_path):
    """Two record files that differ only in the tiles give different libraries, both
    correct: the build really applies what the records say."""
    loaded, models = small
    keys = [k.key for k in conv_kernels(models, X86)]
    variant = resolve_variant(loaded, "1")
    libraries = []
    for tile in ((2, 1), (8, 2)):
        folder = tmp_path / f"rec{tile[0]}" / X86.name
        folder.mkdir(parents=True)
        records = {k: {"t_tile": tile[0], "f_vecs": tile[1], "us": 1.0} for k in keys}
        (folder / "small.json").write_text(records_json(X86, records))
        bundle = build(
            loaded,
            X86,
            variant,
            tmp_path / f"out{tile[0]}",
            BuildOptions(samples=SMALL_SAMPLES, records_dir=folder.parent),
        )
        assert bundle.manifest.schedule.tuning["conv_tuned"] == 2
        assert runs_like_pytorch(bundle, loaded.model).passed
        libraries.append((bundle.path / "model.so").read_bytes())
    assert libraries[0] != libraries[1]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "unreadable"),
        (json.dumps({"format": "other"}), "not a mscnn-edge tuning record file"),
        (records_json(X86, {}, version=99), "record version 99"),
        (records_json(X86, {}, target="aarch64"), "for target 'aarch64'"),
        (records_json(X86, None), "no 'records' table"),
        (records_json(X86, {"k": {"t_tile": 0, "f_vecs": 1, "us": 1}}), "record 'k' needs"),
        (records_json(X86, {"k": {"t_tile": 4, "f_vecs": 1}}), "record 'k' needs"),
        (records_json(X86, {"k": {"t_tile": "4", "f_vecs": 1, "us": 1}}), "record 'k' needs"),
    ],
)
def test_malformed_records_stop_the_build_with_the_file_named(content, expected, tmp_path):
    folder = tmp_path / X86.name
    folder.mkdir()
    (folder / "bad.json").write_text(content)
    with pytest.raises(CompileError, match=expected) as err:
        load_records(X86, tmp_path)
    assert "bad.json" in str(err.value) and "make tune TARGET=x86_64" in str(err.value)


def test_no_records_folder_means_default_tiles(tmp_path):
    assert load_records(X86, tmp_path) == ({}, [])


@pytest.mark.parametrize("name", ["x86_64", "x86_64-avx512"])
def test_committed_records_cover_the_default_matrix(name, tmp_path):
    """The records in the repository match today's kernels: every conv kernel of every
    model `make build` builds has one (else the records are stale: re-run make tune)."""
    target = TARGETS[name]
    tiles, files = load_records(target)
    if not files:
        pytest.skip(f"no tuning records committed for {name} (compile/tuning/{name}/)")
    covers = [json.loads((RECORDS_DIR / f["file"]).read_text())["covers"] for f in files]
    presets = {c["preset"] for c in covers}
    assert {"multi_scopic_leadwise", "cpsc2019"} <= presets
    for preset in ("multi_scopic_leadwise", "cpsc2019"):
        loaded = mscnn.load_model(preset)
        models = {}
        for spec in ("12", "6", "4", "3", "2") if preset != "cpsc2019" else ("1",):
            variant = resolve_variant(loaded, spec)
            model = loaded.model.eval()
            if len(variant.indices) != model.in_channels:
                model = mscnn.derive_variant(model, variant.indices).eval()
            path = export_onnx(model, tmp_path / f"{preset}-{spec}.onnx", batch=1, samples=5000)
            models[spec] = (path, (1, model.in_channels, 5000))
        missing = [k.description for k in conv_kernels(models, target) if k.key not in tiles]
        assert not missing, f"stale records for {name}/{preset}; run make tune: {missing[:3]}"


# --------------------------------------------------------------------------------------
# RPC (loopback: a tracker and an RPC server on this machine)


@pytest.mark.slow
def test_tuning_through_rpc(small, rpc_device, tmp_path):
    _, models = small
    records, summary = tune(X86, models, tmp_path / "work", threads=1, rpc=rpc_device, max_trials=1)
    assert summary["measured_on"] == str(rpc_device) and len(records) == 2
    assert all(r["us"] > 0 for r in records)


@pytest.mark.parametrize(
    ("tracker", "key", "expected"),
    [
        ("localhost", "k", "not HOST:PORT"),
        ("localhost:0", "k", "not HOST:PORT"),
        (":9190", "k", "not HOST:PORT"),
        ("localhost:9190", None, "needs --rpc-key"),
        (None, "k", "needs --rpc-tracker"),
    ],
)
def test_rpc_options_are_checked(tracker, key, expected):
    with pytest.raises(DeployError, match=expected):
        Rpc.parse(tracker, key)


def test_an_unreachable_tracker_is_a_clear_error():
    with pytest.raises(DeployError, match="cannot get a device"):
        Device(Rpc("127.0.0.1", 9, "nobody", timeout=5, wait=2))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--target", "aarch64"], "cannot be measured here"),
        (["--target", "cuda"], "dlight"),
        (["--target", "riscv"], "unknown target 'riscv'"),
        (["--target", "x86_64", "--presets", "nope"], "unknown preset 'nope'"),
        (["--target", "x86_64", "--rpc-tracker", "nohost"], "not HOST:PORT"),
        (["--target", "x86_64", "--rpc-key", "k"], "needs --rpc-tracker"),
    ],
)
def test_tune_cli_user_errors(args, expected, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "compile", "tune", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert expected in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.iterdir())  # nothing written
