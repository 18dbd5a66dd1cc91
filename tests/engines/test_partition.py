"""Partitioned dataset-scope stages in one process (recognize.engines.partition)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from recognize import Frame, Stage
from recognize.data_engine.outliers import find_outliers
from recognize.engines.local import LocalEngine
from recognize.engines.partition import run_partitioned
from recognize.errors import RecognizeError
from recognize.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale_rehearsal  # noqa: E402  - the rehearsal's pixel-free region_outliers


def test_groups_see_their_items_in_dataset_order_and_decide_as_find_outliers_does():
    frames = list(scale_rehearsal.synthetic_frames(300))
    stage = scale_rehearsal.SyntheticOutliers(k=2, drop_fraction=0.1)
    by_tag: dict[str, list[tuple[str, int, np.ndarray]]] = {}
    for frame in frames:
        for r, tag, vector in stage.region_features([frame])[0]:
            by_tag.setdefault(tag, []).append((frame.name, r, vector))
    expected = set()
    for tag, members in by_tag.items():
        with threadpool_limits(limits=1):
            result = find_outliers({tag: np.stack([v for *_, v in members])}, k=2, drop_fraction=0.1)[tag]
        expected |= {(members[i][0], members[i][1]) for i in result.dropped}
    outside = {(f.name, r) for f in frames for r, reg in enumerate(f.regions) if reg.box[0] >= 64}
    region = {(f.name, r): (f.name, reg.tag, reg.box) for f in frames for r, reg in enumerate(f.regions)}
    out = list(LocalEngine().run(Pipeline([stage]), frames))
    dropped = {(r.frame.name, d.tag, d.box) for r in out for d in r.frame.dropped}
    assert expected and outside and dropped == {region[key] for key in expected | outside}


def test_chunking_does_not_change_the_result():
    one = run_partitioned(scale_rehearsal.SyntheticOutliers(), list(scale_rehearsal.synthetic_frames(200)), chunk=7)
    two = run_partitioned(scale_rehearsal.SyntheticOutliers(), list(scale_rehearsal.synthetic_frames(200)), chunk=500)
    assert [f.to_json() for f in one] == [f.to_json() for f in two]


class BadPartition(Stage):
    name = "bad_partition"
    kind = "filter"
    scope = "dataset"
    partitioned = True

    def process(self, frames):
        return run_partitioned(self, frames)

    def partition(self, frames):
        return [[("k", 1)]]  # one list, whatever the number of frames


def test_a_partition_that_breaks_the_contract_names_the_stage():
    with pytest.raises(RecognizeError, match="'bad_partition': partition\\(\\) returned items for 1 frames of 2"):
        Pipeline([BadPartition()])([Frame(source="a", width=1, height=1), Frame(source="b", width=1, height=1)])


def test_a_stage_that_does_not_partition_says_so():
    assert not Stage.partitioned
    with pytest.raises(NotImplementedError, match="does not partition"):
        scale_rehearsal.SyntheticOutliers.__mro__[2].partition(BadPartition(), [])  # Stage.partition
