"""A fresh, writable copy of a built bundle per test, to tamper with; the tiny bundle."""

import hashlib
import shutil
import time
from pathlib import Path

import pytest

import compile as compile_package
import deploy
import mscnn

TINY_SAMPLES = 64  # the tiny bundle's input length


@pytest.fixture
def bundle_copy(tmp_path, cpsc_bundles):
    def copy(target="x86_64"):
        dest = tmp_path / target / cpsc_bundles[target].path.name
        shutil.copytree(cpsc_bundles[target].path, dest)
        return dest

    return copy


@pytest.fixture(scope="session")
def arm_leadwise_bundles(tmp_path_factory, leadwise, bundle_samples):
    """Every CinC lead set of the lead-wise model, for each ARM target."""
    import mscnn
    from compile import TARGETS, BuildOptions, build, resolve_variant

    out = tmp_path_factory.mktemp("arm-leadwise")
    options = BuildOptions(samples=bundle_samples)
    return {
        (arch, spec): build(leadwise, TARGETS[arch], resolve_variant(leadwise, spec), out, options)
        for arch in ("aarch64", "armv7")
        for spec in mscnn.LEAD_SETS
    }


# The tiny bundle (a two-branch model, 64 samples, x86-64), built once per source version and
# kept in pytest's cache, keyed by a hash of the mscnn, compile and deploy sources.


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for package in (mscnn, compile_package, deploy):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


TINY_BACKBONE = {
    **mscnn.PRESETS["cpsc2019"].config,
    "scopes": [[[1]], [[2]]],
    "num_filters": [[8], [8]],
    "filter_lengths": [[3], [3]],
    "subsample_lengths": [2, 2],
    "dropouts": 0,
}


def build_tiny(out: Path, **options) -> Path:
    from compile import TARGETS, BuildOptions, build, resolve_variant

    model = mscnn.MultiScopicCNN(1, **TINY_BACKBONE)
    mscnn.seeded_init(model, 5)
    loaded = mscnn.LoadedModel(model.eval(), None, ("ECG",), 500, "tiny test model")
    options = BuildOptions(samples=TINY_SAMPLES, tuning=False, **options)
    return build(loaded, TARGETS["x86_64"], resolve_variant(loaded, "1"), out, options).path


def build_tiny_detector(out: Path) -> Path:
    """The tiny backbone with a QRS head, at twice the tiny bundle's length: another
    model whose library can be swapped into the tiny bundle and back (~8 s)."""
    from compile import TARGETS, BuildOptions, build, resolve_variant

    base = mscnn.PRESETS["cpsc2019_qrs"].config
    config = {
        **base,
        "cnn": {"name": "multi_scopic", "multi_scopic": TINY_BACKBONE},
        "clf": {**base["clf"], "out_channels": [8], "dropouts": [0.0, 0.0]},
    }
    model = mscnn.ECG_SEQ_LAB_NET(["N"], 1, config)
    mscnn.seeded_init(model, 5)
    loaded = mscnn.LoadedModel(model.eval(), None, ("ECG",), 500, "tiny test detector")
    options = BuildOptions(samples=2 * TINY_SAMPLES, tuning=False)
    return build(loaded, TARGETS["x86_64"], resolve_variant(loaded, "1"), out, options).path


def _cached_build(request, tmp_path_factory, stem: str, builder) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is None:  # pytest's cache disabled: build per session
        return builder(tmp_path_factory.mktemp(stem))
    folder = cache.mkdir(f"{stem}-{_sources_digest()}")
    for stale in folder.parent.glob(f"{stem}-*"):  # from other sources, unused for an hour
        if stale != folder and time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    built = folder / "x86_64" / "custom-1lead"  # where build() publishes it
    return built if (built / "manifest.json").is_file() else builder(folder)


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> Path:
    return _cached_build(request, tmp_path_factory, "tiny-bundle", build_tiny)


@pytest.fixture(scope="session")
def tiny_detector_bundle(request, tmp_path_factory) -> Path:
    return _cached_build(request, tmp_path_factory, "tiny-detector", build_tiny_detector)


@pytest.fixture(scope="session")
def tiny_builder():
    """build_tiny itself: build(out, **BuildOptions fields) -> the bundle's folder (~5 s)."""
    return build_tiny


@pytest.fixture
def tiny(tiny_bundle, tmp_path) -> Path:
    """A private, writable copy of the tiny bundle."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / tiny_bundle.name))
