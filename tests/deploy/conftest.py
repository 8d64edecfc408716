"""A fresh, writable copy of a built bundle per test, to tamper with."""

import shutil

import pytest


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
