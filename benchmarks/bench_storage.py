"""Bytes per image of recognize's per-image result (the Frame JSON), for the scale plan (docs/scale.md).

Synthetic but shaped like real output: 20 tags with Chinese names, N regions whose masks are wobbly
ellipses covering 1-25% of the image (object-like: few runs per column, as SAM masks of objects are),
stored as COCO RLE exactly as `recognize run` writes them. Reports raw and gzip sizes per image.

    python benchmarks/bench_storage.py
    python benchmarks/bench_storage.py OUT     # bytes per image of a real run's `shards` output
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from recognize.frame import Frame, Region, Tag


def frame_bytes(width: int, height: int, regions: int, masks: bool, rng: np.random.Generator) -> tuple[int, int]:
    frame = Frame.from_array(np.zeros((1, 1, 3), np.uint8))
    frame.name, frame.source, frame.width, frame.height = "img_000123", "s3://bucket/images/000123/img_000123.jpg", width, height
    frame.tags = [Tag(name=f"tag {i:04d}", name_zh="标签", score=float(rng.random()), index=i, source="ram_plus")
                  for i in range(20)]
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for r in range(regions):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        a, b = rng.uniform(0.05, 0.25) * width, rng.uniform(0.05, 0.25) * height
        box = (max(cx - a, 0.0), max(cy - b, 0.0), min(cx + a, width), min(cy + b, height))
        mask = None
        if masks:
            wobble = 1 + 0.08 * np.sin(np.arctan2(yy - cy, xx - cx) * 7)
            mask = (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2) <= wobble
        out.append(Region(box=box, score=0.5, tag=f"tag {r:04d}", tag_zh="标签", mask=mask, mask_score=0.9,
                          source="sam" if masks else "grounding_dino"))
    frame.regions = out
    data = frame.to_json(indent=None).encode()
    return len(data), len(gzip.compress(data))


def run_folder_bytes(out: Path) -> str:
    """Bytes per image of a real run's `shards` output: shard bytes / finished images in its journal."""
    import json

    from recognize.outputs.shards import shard_files

    shards = shard_files(out)
    records = [json.loads(line) for line in (out / ".recognize" / "done.jsonl").read_text().splitlines()]
    done = {r["name"] for r in records if not r.get("error")}
    raw = sum(p.stat().st_size for p in shards)
    packed = sum(len(gzip.compress(p.read_bytes())) for p in shards)
    regions = sum(len(json.loads(line)["regions"]) for p in shards for line in p.read_text().splitlines())
    return (f"{out}: {len(done)} images, {regions} regions, {len(shards)} shards: "
            f"{raw / len(done) / 1024:.1f} KiB/img JSONL, {packed / len(done) / 1024:.1f} KiB/img gzip, "
            f"journal {(out / '.recognize' / 'done.jsonl').stat().st_size / len(done):.0f} B/img")


def main() -> None:
    import sys

    if len(sys.argv) > 1:  # python benchmarks/bench_storage.py OUT: measure a real run's shards
        print(run_folder_bytes(Path(sys.argv[1])))
        return
    rng = np.random.default_rng(0)
    print("| image | regions | masks | JSON KiB/img | gzip KiB/img |\n|---|---:|---|---:|---:|")
    for width, height in ((1024, 768), (4000, 3000)):
        for regions, masks in ((8, False), (8, True), (20, True)):
            sizes = np.mean([frame_bytes(width, height, regions, masks, rng) for _ in range(5)], axis=0)
            print(f"| {width}x{height} | {regions} | {'yes' if masks else 'no'} | {sizes[0] / 1024:.1f} | "
                  f"{sizes[1] / 1024:.1f} |")


if __name__ == "__main__":
    main()
