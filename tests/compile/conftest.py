"""Bundles built once per test session: the cpsc2019 model for every target and the
lead-wise model's every CinC lead set for x86-64, at a short input to keep CI quick."""

import pytest

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant

SAMPLES = 512


@pytest.fixture(scope="session")
def bundle_samples():
    return SAMPLES


@pytest.fixture(scope="session")
def cpsc():
    return mscnn.load_model("cpsc2019")


@pytest.fixture(scope="session")
def leadwise():
    return mscnn.load_model("multi_scopic_leadwise")


@pytest.fixture(scope="session")
def cpsc_bundles(tmp_path_factory, cpsc):
    out = tmp_path_factory.mktemp("bundles")
    variant = resolve_variant(cpsc, "1")
    options = BuildOptions(samples=SAMPLES)
    return {name: build(cpsc, target, variant, out, options) for name, target in TARGETS.items()}


@pytest.fixture(scope="session")
def leadwise_bundles(tmp_path_factory, leadwise):
    out = tmp_path_factory.mktemp("leadwise")
    options = BuildOptions(samples=SAMPLES)
    return {
        spec: build(leadwise, TARGETS["x86_64"], resolve_variant(leadwise, spec), out, options)
        for spec in mscnn.LEAD_SETS
    }
