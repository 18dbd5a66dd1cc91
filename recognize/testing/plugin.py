"""pytest plugin (entry point `pytest11`): fixtures that check a stage against the plugin contract.

Installed with recognize, so a plugin's tests can simply ask for the fixtures:

    def test_contract(check_stage, sample_frames):
        check_stage(MyStage, sample_frames)

`check_stage` is `recognize.testing.check_stage` with the test's own `tmp_path` for output files.
"""

from __future__ import annotations

from typing import Any

import pytest

from recognize import testing


@pytest.fixture
def sample_frames() -> list:
    """Three fresh frames around small seeded images of different sizes."""
    return testing.sample_frames()


@pytest.fixture
def check_stage(tmp_path):
    """`check_stage(factory, frames=None, **options)`: every contract rule that applies to the stage."""

    def check(factory: Any, frames: Any = None, **options: Any) -> list:
        options.setdefault("out_dir", tmp_path / "contract")
        return testing.check_stage(factory, frames, **options)

    return check
