"""Shared test settings: hypothesis profiles and a quiet, deterministic torch."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import mscnn
from compile import TARGETS, BuildOptions, build, resolve_variant

# CI keeps the example counts small enough for its time budget; `HYPOTHESIS_PROFILE=dev`
# runs many more locally.
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    """A seeded generator per test: never the global RNG state."""
    return torch.Generator().manual_seed(1234)


# Bundles built once per test session (tests/compile and tests/deploy share them): the
# cpsc2019 model for every target, and the lead-wise model's every CinC lead set for
# x86-64, at a short input to keep CI quick.
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
