"""FrameSpool: the walk's survivors on disk, read back in order, as often as needed."""

from __future__ import annotations

import numpy as np

from recognize.engines.frame_spool import FrameSpool
from recognize.frame import Frame, Region


def _frames(count: int) -> list[Frame]:
    return [Frame(source=f"img{i}.jpg", name=f"img{i}", width=8, height=8,
                  regions=[Region(box=(0, 0, 4, 4), score=0.5, tag=f"t{i % 3}")]) for i in range(count)]


def test_frames_come_back_in_order_twice_and_the_file_goes_away(tmp_path):
    spool = FrameSpool(tmp_path).extend(iter(_frames(50)))
    assert len(spool) == 50
    first = [f.to_json() for f in spool]
    assert first == [f.to_json() for f in _frames(50)] == [f.to_json() for f in spool]
    assert spool.path.parent == tmp_path and spool.path.is_file()
    spool.close()
    assert not spool.path.exists()


def test_a_frame_whose_pixels_were_given_as_an_array_stays_an_object(tmp_path):
    pixels = np.zeros((4, 5, 3), dtype=np.uint8)
    given = Frame.from_array(pixels, source="<array>", name="a")
    spool = FrameSpool(tmp_path).extend([_frames(1)[0], given])
    back = list(spool)
    assert back[1] is given and back[0] is not None and back[0]._image is None
    spool.close()
