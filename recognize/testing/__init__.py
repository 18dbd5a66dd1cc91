"""Check a stage against the plugin contract, from a plugin's own tests.

Plain functions (use them from any test framework) and a pytest plugin (`recognize.testing.plugin`,
registered through the `pytest11` entry point, so `pip install recognize` is enough) with fixtures
that call them. Each check states one rule of the contract written in docs/plugins.md:

    from recognize.testing import check_stage, sample_frames

    def test_my_stage_keeps_the_contract(tmp_path):
        check_stage(lambda: MyStage(threshold=0.3), sample_frames())

A failed rule is an `AssertionError` whose message says which rule and how to fix the stage.
`run_recipe` runs a recipe through the real `recognize run` command, for end-to-end tests.
"""

from __future__ import annotations

from recognize.testing.checks import (
    ContractViolation,
    assert_frames_equal,
    check_batch_independence,
    check_frames,
    check_output,
    check_params,
    check_prepared_inputs,
    check_stage,
    sample_frames,
)
from recognize.testing.cli import RecipeRun, run_recipe

__all__ = [
    "ContractViolation",
    "RecipeRun",
    "assert_frames_equal",
    "check_batch_independence",
    "check_frames",
    "check_output",
    "check_params",
    "check_prepared_inputs",
    "check_stage",
    "run_recipe",
    "sample_frames",
]
