"""Shared test settings: hypothesis profiles and a quiet, deterministic torch."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

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
