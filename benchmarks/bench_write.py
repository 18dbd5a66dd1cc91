"""Time the per-image writing of `annotated_image` and `json` for one large photo with masks.

The frame is built the way the output tests build theirs: the photo's pixels in memory (as the
runner's writer gets them), `--masks` full-size boolean masks (ellipses of 1-40% of the picture,
seeded, so runs compare) with their boxes, tags and labels. Each round writes both outputs into a
temporary folder and records the parts: supervision's annotators (including any conversion their
decorators make around a Pillow image), `Frame.to_detections`, the panel band, encoding, the
atomic file write, the JSON text.

`--baseline REV` also loads `recognize/outputs/annotated_image.py` and `mask_to_rle` as they are at
git revision REV, checks that they give the same picture (pixel for pixel), the same annotated-image file (byte
for byte), and alternates the two in every round, so that a noisy machine slows both alike. The
numbers printed are medians over the rounds.

    python benchmarks/bench_write.py --rounds 7 --baseline 6a3686b
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_machine

import numpy as np  # noqa: E402

import recognize.frame as frame_module  # noqa: E402
from recognize.frame import Frame, Region, Tag  # noqa: E402
from recognize.outputs import annotated_image as current  # noqa: E402
from recognize.outputs.json_output import JsonOutput  # noqa: E402

TAGS = ["person", "dog", "ball", "tree", "car", "bench", "grass", "sky", "cup", "chair", "lamp", "book"]


def default_photo() -> Path:
    from bench_models import REFERENCE  # where the benchmarks find the reference data

    return REFERENCE / "data" / "images" / "demo" / "demo3.jpg"


def make_frame(photo: Path, masks: int, seed: int = 0) -> Frame:
    from recognize.images import load_image

    image = load_image(photo)
    h, w = image.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    rng = np.random.default_rng(seed)
    regions = []
    for i in range(masks):
        tag = TAGS[i % len(TAGS)]
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.05, 0.35) * h, rng.uniform(0.05, 0.35) * w
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
        regions.append(Region(box=box, score=round(0.3 + 0.6 * rng.random(), 3), tag=tag, mask=mask))
    return Frame.from_array(image, source=str(photo), name=photo.stem,
                            tags=[Tag(name=t, score=0.8) for t in dict.fromkeys(r.tag for r in regions)],
                            regions=regions, caption="a photo with regions, to time the writing of its outputs")


def load_baseline(rev: str) -> tuple[Any, Callable[..., Any]]:
    """`annotated_image` and `mask_to_rle` as they are at git revision `rev` (module, function)."""
    def source(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    folder = Path(tempfile.mkdtemp(prefix="bench_write_"))
    modules = []
    for path, name in (("recognize/outputs/annotated_image.py", "recognize.outputs._baseline_annotated_image"),
                       ("recognize/frame.py", "recognize._baseline_frame")):
        file = folder / Path(path).name
        file.write_text(source(path))
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # pydantic resolves the params' annotations through it
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1].mask_to_rle


class Parts:
    """Seconds per named part, summed over a write, by wrapping the functions that do them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._patches: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start

        self._patches.append((owner, attr, original))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches.clear()


@contextlib.contextmanager
def parts_of(module: Any, mask_to_rle: Callable[..., Any]) -> Iterator[Parts]:
    import cv2
    import supervision as sv

    parts = Parts()
    frame_module.mask_to_rle = mask_to_rle  # what Region's serializer calls
    parts.wrap(frame_module, "mask_to_rle", "json: masks to RLE")
    parts.wrap(Frame, "to_detections", "Frame.to_detections")
    parts.wrap(sv.MaskAnnotator, "annotate", "MaskAnnotator")
    parts.wrap(sv.BoxAnnotator, "annotate", "BoxAnnotator")
    parts.wrap(sv.RichLabelAnnotator, "annotate", "RichLabelAnnotator")
    parts.wrap(sv.LabelAnnotator, "annotate", "LabelAnnotator")
    for name in ("_panel_band", "_add_panel"):
        if hasattr(module.AnnotatedImage, name):
            parts.wrap(module.AnnotatedImage, name, "panel")
    parts.wrap(module, "write_bytes", "atomic write (image)")
    if hasattr(module.AnnotatedImage, "encode"):  # encoding = encode() less the drawing in it
        parts.wrap(module.AnnotatedImage, "render_bgr", "render")
        parts.wrap(module.AnnotatedImage, "encode", "_encode+render")
    else:
        parts.wrap(module.AnnotatedImage, "render", "render")
    parts.wrap(cv2, "imencode", "cv2.imencode")
    try:
        yield parts
    finally:
        parts.restore()
        frame_module.mask_to_rle = current_mask_to_rle


current_mask_to_rle = frame_module.mask_to_rle


def write_once(module: Any, mask_to_rle: Callable[..., Any], frame: Frame, out: Path) -> dict[str, float]:
    stage, json_stage = module.AnnotatedImage(), JsonOutput()
    with parts_of(module, mask_to_rle) as parts:
        start = time.perf_counter()
        stage.write(frame, out)
        middle = time.perf_counter()
        json_stage.write(frame, out)
        end = time.perf_counter()
    s = dict(parts.seconds)
    s["annotated_image total"] = middle - start
    s["json total"] = end - middle
    if "_encode+render" in s:
        s["encode (JPEG)"] = s.pop("_encode+render") - s["render"]
    else:  # the old write: render, then Pillow's save into a buffer
        s["encode (JPEG)"] = s["annotated_image total"] - s["render"] - s.get("atomic write (image)", 0.0)
    drawn = sum(s.get(k, 0.0) for k in ("Frame.to_detections", "MaskAnnotator", "BoxAnnotator",
                                          "RichLabelAnnotator", "LabelAnnotator", "panel"))
    s["render: the rest (copies, conversions)"] = s["render"] - drawn
    return s


def same_output(baseline: Any, baseline_rle: Callable[..., Any], frame: Frame, out: Path) -> tuple[bool, bool, bool]:
    """(the same picture, the same annotated-image file bytes, the same RLE of every mask) as the baseline's."""
    old, new = baseline.AnnotatedImage(), current.AnnotatedImage()
    pixels = np.array_equal(np.asarray(old.render(frame)), np.asarray(new.render(frame)))
    old.write(frame, out / "old")
    new.write(frame, out / "new")
    name = old.files(frame, out / "old")[0].relative_to(out / "old")
    files = (out / "old" / name).read_bytes() == (out / "new" / name).read_bytes()
    rles = all(baseline_rle(r.mask) == current_mask_to_rle(r.mask) for r in frame.regions if r.mask is not None)
    return pixels, files, rles


def versions() -> str:
    """The machine (`bench_machine.machine_line`: CPU model and flags, load) and the drawing libraries."""
    import cv2
    import PIL
    import supervision as sv
    import torch  # noqa: F401 - imported for machine_line's torch version, as the runner has it

    from bench_machine import machine_line

    return (f"{machine_line()}\nopencv {cv2.__version__}, supervision {sv.__version__}, pillow {PIL.__version__}, "
            f"numpy {np.__version__}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, default=default_photo(), help="the photo (default: demo3.jpg, 13.8 MP)")
    parser.add_argument("--masks", type=int, default=8, help="regions, each with a full-size mask and a box")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each writes once with each implementation)")
    parser.add_argument("--baseline", metavar="REV", help="git revision whose annotated_image/mask_to_rle to compare")
    args = parser.parse_args(argv)

    frame = make_frame(args.photo, args.masks)
    print(versions())
    print(f"{args.photo.name}: {frame.width}x{frame.height} ({frame.width * frame.height / 1e6:.1f} MP), "
          f"{args.masks} masks and boxes")
    impls: dict[str, tuple[Any, Callable[..., Any]]] = {"now": (current, current_mask_to_rle)}
    if args.baseline:
        impls = {"baseline": load_baseline(args.baseline), **impls}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in impls}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.baseline:
            pixels, files, rles = same_output(*impls["baseline"], frame, out)
            print(f"same picture as {args.baseline}: {pixels}; same file bytes: {files}; same RLE masks: {rles}")
        for name, (module, rle) in impls.items():  # warm-up: fonts, imports, first allocations
            write_once(module, rle, frame, out / name)
        for r in range(args.rounds):
            order = list(impls) if r % 2 == 0 else list(impls)[::-1]
            for name in order:
                module, rle = impls[name]
                results[name].append(write_once(module, rle, frame, out / name))
    keys = list(dict.fromkeys(k for runs in results.values() for run in runs for k in run))
    order = ["annotated_image total", "render", "Frame.to_detections", "MaskAnnotator", "BoxAnnotator",
             "RichLabelAnnotator", "LabelAnnotator", "panel", "render: the rest (copies, conversions)",
             "encode (JPEG)", "cv2.imencode", "atomic write (image)", "json total", "json: masks to RLE"]
    keys = [k for k in order if k in keys] + [k for k in keys if k not in order]
    names = list(impls)
    print(f"\nmedian seconds over {args.rounds} rounds" + (", alternating" if len(names) > 1 else ""))
    print(f"| part | {' | '.join(names)} |" + (" ratio |" if len(names) > 1 else ""))
    print("|---|" + "---:|" * (len(names) + (len(names) > 1)))
    for key in keys:
        values = [statistics.median(run.get(key, 0.0) for run in results[n]) for n in names]
        cells = " | ".join(f"{v:.3f}" for v in values)
        ratio = ""
        if len(names) > 1:
            ratio = f" {values[0] / values[1]:.1f}x |" if values[1] > 0 else " – |"
        print(f"| {key} | {cells} |{ratio}")


if __name__ == "__main__":
    main()
