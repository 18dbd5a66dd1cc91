"""Bytes per image of recognize's per-image result (the Frame JSON), for the scale plan (docs/scale.md).

Synthetic but shaped like real output: 20 tags with Chinese names, N regions whose masks are wobbly
ellipses covering 1-25% of the image (object-like: few runs per column, as SAM masks of objects are),
stored as COCO RLE exactly as `recognize run` writes them. Reports raw and gzip sizes per image, and
the same frames in a Parquet shard (`shards` with `format: parquet`: typed columns, zstd).

    python benchmarks/bench_storage.py
    python benchmarks/bench_storage.py OUT     # bytes per image of a real run's `shards` output
    python benchmarks/bench_storage.py --tiny-run OUT  # run RAM -> Grounding DINO -> SAM (tiny random
                                                       # models) on the reference photos into OUT/jsonl and
                                                       # OUT/parquet, and compare the two shard formats
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from recognize.frame import Frame, Region, Tag


def synthetic_frame(width: int, height: int, regions: int, masks: bool, rng: np.random.Generator) -> Frame:
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
    return frame


def parquet_bytes(frames: list[Frame]) -> tuple[int, int]:
    """Bytes of `frames` in one Parquet shard, as the `shards` output writes it: (rows, footer). The
    footer is per shard, shared by its `frames_per_shard` (10,000) frames, so it is reported apart."""
    import tempfile

    import pyarrow.parquet as pq

    from recognize.outputs.shards import ShardsOutput, shard_files

    with tempfile.TemporaryDirectory() as folder:
        stage = ShardsOutput(format="parquet", frames_per_shard=len(frames))
        for frame in frames:
            stage.write(frame, Path(folder))
        stage.finish([], Path(folder))
        (shard,) = shard_files(Path(folder))
        footer = pq.read_metadata(shard).serialized_size + 12  # + its length, and the magic at both ends
        return shard.stat().st_size - footer, footer


def run_folder_bytes(out: Path) -> str:
    """Bytes per image of a real run's `shards` output (JSONL or Parquet): shard bytes / finished images
    in its journal."""
    import json

    from recognize.outputs.shards import read_shards, shard_files

    shards = shard_files(out)
    records = [json.loads(line) for line in (out / ".recognize" / "done.jsonl").read_text().splitlines()]
    done = {r["name"] for r in records if not r.get("error")}
    raw = sum(p.stat().st_size for p in shards)
    packed = sum(len(gzip.compress(p.read_bytes())) for p in shards)
    regions = sum(len(frame.regions) for frame in read_shards(out))
    kinds = "/".join(sorted({p.suffix[1:] for p in shards}))
    return (f"{out}: {len(done)} images, {regions} regions, {len(shards)} {kinds} shards: "
            f"{raw / len(done) / 1024:.1f} KiB/img, {packed / len(done) / 1024:.1f} KiB/img gzip, "
            f"journal {(out / '.recognize' / 'done.jsonl').stat().st_size / len(done):.0f} B/img")


def tiny_run(out: Path) -> None:
    """RAM (tiny fixture) -> Grounding DINO (tiny, random, thresholds 0: every box) -> SAM (tiny, random)
    on the reference photos, once per shard format; prints each run's bytes per image."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_models import IMAGES, Kit, default_cache

    from recognize import plugins
    from recognize.pipeline import Pipeline
    from recognize.runner import run_to_folder

    kit = Kit(quick=True, cache=default_cache())
    for fmt in ("jsonl", "parquet"):
        stages = [plugins.get_stage("ram")(**kit.tagger_params("ram")),
                  plugins.get_stage("grounding_dino")(**kit.gd_params(), box_threshold=0.0, text_threshold=0.0),
                  plugins.get_stage("sam")(**kit.sam_params())]
        pipeline = Pipeline(stages, [plugins.get_stage("shards")(format=fmt)], batch_size=1)
        run_to_folder(pipeline, IMAGES, out / fmt, quiet=True, overwrite=True)
        print(run_folder_bytes(out / fmt))


def main() -> None:
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--tiny-run":
        tiny_run(Path(sys.argv[2]))
        return
    if len(sys.argv) > 1:  # python benchmarks/bench_storage.py OUT: measure a real run's shards
        print(run_folder_bytes(Path(sys.argv[1])))
        return
    rng = np.random.default_rng(0)
    print("| image | regions | masks | JSON KiB/img | gzip KiB/img | Parquet KiB/img | Parquet footer KiB/shard |\n"
          "|---|---:|---|---:|---:|---:|---:|")
    for width, height in ((1024, 768), (4000, 3000)):
        for regions, masks in ((8, False), (8, True), (20, True)):
            frames = [synthetic_frame(width, height, regions, masks, rng) for _ in range(5)]
            data = [frame.to_json(indent=None).encode() for frame in frames]
            raw, packed = np.mean([len(d) for d in data]), np.mean([len(gzip.compress(d)) for d in data])
            rows, footer = parquet_bytes(frames)
            print(f"| {width}x{height} | {regions} | {'yes' if masks else 'no'} | {raw / 1024:.1f} | "
                  f"{packed / 1024:.1f} | {rows / len(frames) / 1024:.1f} | {footer / 1024:.1f} |")


if __name__ == "__main__":
    main()
