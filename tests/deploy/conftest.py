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
