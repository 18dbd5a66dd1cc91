"""Scale rehearsal: the data engine's dataset-scope stage (`region_outliers`) over >= 100,000 synthetic
frames on a local Ray cluster, checking what issue 14 asks (driver memory, equality with the local
engine, a worker killed mid-way).

    python benchmarks/scale_rehearsal.py --frames 100000 --workers 2 --compare 5000

Frames carry regions without pixels; `synthetic_outliers` is the real `region_outliers` stage (the
same partition / K-Means++ / drop / apply code) with one change: a region's embedding is generated
from a seed (frame name, region index) instead of a tagger looking at the crop, so no weights or
images are needed and a frame's items do not depend on its batch neighbours. One region in ~40 is
planted far from its tag's centre. The module is also the plugin that registers the stage (the Ray
workers import it through RECOGNIZE_PLUGINS=scale_rehearsal). tests/engines/test_scale_rehearsal.py
runs the same functions at a small N.

Driver memory is the driver process's private resident memory (RssAnon, sampled every 50 ms): the
figures compare it before the run (frames generated) with its peak during the run, for Ray and for
the local engine, whose dataset stage holds every embedding in the driver.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import recognize
from recognize.data_engine.outliers_stage import RegionOutliers, RegionOutliersParams
from recognize.frame import Frame, Region

DIM = 128  # embedding size (RAM++'s image embedding is 512, CLIP ViT-B/16's 512)
TAGS = [f"tag{i:03d}" for i in range(64)]


class SyntheticOutliersParams(RegionOutliersParams):
    kill_marker: str | None = None  # a file path: the first worker to reach `kill_at` creates it and SIGKILLs itself
    kill_at: str = ""  # frame name at which that happens


class SyntheticOutliers(RegionOutliers):
    """`region_outliers` with seeded embeddings in place of a tagger (pixel-free, weightless)."""

    name: ClassVar[str] = "synthetic_outliers"
    Params: ClassVar[type] = SyntheticOutliersParams

    def load(self) -> None:  # no tagger to load
        pass

    def model_files(self) -> list:  # nor its files to check
        return []

    def region_features(self, frames: list[Frame]) -> list[list[tuple[int, str, np.ndarray]]]:
        self._maybe_die(frames)
        features = []
        for frame in frames:
            found = []
            for r, region in enumerate(frame.regions):
                x0, y0, x1, y1 = region.box
                if x1 <= 0 or y1 <= 0 or x0 >= (frame.width or 0) or y0 >= (frame.height or 0):
                    continue  # outside the image, as crop_region would say
                found.append((r, region.tag, embedding(frame.name or "", r, region.tag)))
            features.append(found)
        return features

    def _maybe_die(self, frames: list[Frame]) -> None:
        p = self.params
        if not p.kill_marker or not any(frame.name == p.kill_at for frame in frames):
            return
        try:
            fd = os.open(p.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # killed once already: the retried batch goes through
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def embedding(name: str, region: int, tag: str) -> np.ndarray:
    """A tag's centre plus noise; one region in ~40 is planted on the opposite side."""
    centre = np.random.default_rng(_seed("centre", tag)).normal(size=DIM)
    rng = np.random.default_rng(_seed(name, region))
    sign = -1.0 if rng.random() < 0.025 else 1.0
    return (sign * centre + 0.3 * rng.normal(size=DIM)).astype(np.float32)


def synthetic_frames(count: int, start: int = 0) -> Iterator[Frame]:
    """Frames with 1-5 regions each (one in ~50 outside the image), no pixels."""
    for i in range(start, start + count):
        rng = np.random.default_rng(_seed("frame", i))
        regions = []
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = (float(v) for v in rng.integers(0, 48, 2))
            box = (x0, y0, x0 + 16, y0 + 16) if rng.random() > 0.02 else (80.0, 80.0, 96.0, 96.0)
            regions.append(Region(box=box, score=0.9, tag=TAGS[int(rng.integers(len(TAGS)))], source="synthetic"))
        yield Frame(source=f"synthetic://{i}", name=f"f{i:07d}", width=64, height=64, regions=regions)


@recognize.hookimpl
def register_stages(register):
    register(SyntheticOutliers)


# -- measuring -------------------------------------------------------------------------------------


def rss_mb() -> float:
    """The driver's private memory (RssAnon): its heap, not the pages of Ray's shared-memory object
    store it maps when it puts objects there (those are the object store's budget, spilled to disk
    when full)."""
    return _status_kb("RssAnon") / 1024


def vmrss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def _status_kb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return 0.0


class PeakRss:
    """Samples the driver's RSS in a thread (VmHWM cannot be reset between phases)."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak, self._stop = every, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def digest(frame: Frame) -> bytes:
    return hashlib.sha256(frame.to_json(indent=None).encode()).digest()


def run_engine(engine: Any, frames: Iterable[Frame], **params: Any) -> dict[str, Any]:
    """One run of `synthetic_outliers`; the results are folded into one SHA-256 over every frame's
    digest, in order, as they stream (equal runs give equal hashes; the script keeps nothing per frame)."""
    from recognize.pipeline import Pipeline

    pipeline = Pipeline([SyntheticOutliers(**params)], batch_size=64)
    before = rss_mb()
    start = time.perf_counter()
    total, dropped, count = hashlib.sha256(), 0, 0
    with PeakRss() as peak:
        for result in engine.run(pipeline, frames):
            assert result.ok, result.error
            dropped += sum(d.item == "region" for d in result.frame.dropped)
            total.update(digest(result.frame))
            count += 1
    return {"seconds": time.perf_counter() - start, "rss_before_mb": before, "rss_peak_mb": peak.peak,
            "rss_growth_mb": peak.peak - before, "vmrss_after_mb": vmrss_mb(), "dropped_regions": dropped,
            "frames": count, "digest": total.hexdigest()}


def init_ray(workers: int) -> None:
    import ray

    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=max(2, workers), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"RECOGNIZE_PLUGINS": "scale_rehearsal", "PYTHONPATH": path}})


def rehearse(frames: int, workers: int, compare: int, marker_dir: Path) -> dict[str, Any]:
    from recognize.engines.local import LocalEngine
    from recognize.engines.ray_engine import RayEngine

    report: dict[str, Any] = {"frames": frames, "workers": workers, "compare": compare, "dim": DIM, "tags": len(TAGS)}
    # equality on a subset both engines run, with a worker killed in the Ray run
    subset = list(synthetic_frames(compare))
    local = run_engine(LocalEngine(), [f.model_copy(deep=True) for f in subset])
    marker = marker_dir / "killed-subset"
    remote = run_engine(RayEngine(num_workers=workers), subset, kill_marker=str(marker),
                        kill_at=subset[len(subset) // 2].name)
    report["subset"] = {"equal": local["digest"] == remote["digest"] and local["frames"] == compare, "worker_killed": marker.is_file(),
                        "dropped_regions": local["dropped_regions"],
                        "local_s": local["seconds"], "ray_s": remote["seconds"]}
    del subset, local, remote
    # the full run on Ray, a worker killed half-way, its input streamed from a generator (the driver
    # never holds the frames); a quarter-size run first, for the driver's growth against N
    report["regions"] = sum(len(f.regions) for f in synthetic_frames(frames))
    quarter = frames // 4
    small = run_engine(RayEngine(num_workers=workers), synthetic_frames(quarter))
    report["ray_quarter"] = {k: v for k, v in small.items() if k != "digest"}
    marker = marker_dir / "killed-full"
    full = run_engine(RayEngine(num_workers=workers), synthetic_frames(frames), kill_marker=str(marker),
                      kill_at=f"f{frames // 2:07d}")
    report["ray"] = {k: v for k, v in full.items() if k != "digest"} | {"worker_killed": marker.is_file()}
    local_full = run_engine(LocalEngine(), synthetic_frames(frames))
    report["local"] = {k: v for k, v in local_full.items() if k != "digest"}
    report["full_equal"] = full["digest"] == local_full["digest"] and full["frames"] == local_full["frames"] == frames
    return report


def cpu_line() -> str:
    from bench_machine import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    shown = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    return f"{model}; {os.cpu_count()} logical CPUs; flags: {shown}"


SECTION_START = "<!-- scale_rehearsal: written by benchmarks/scale_rehearsal.py --results-md -->"
SECTION_END = "<!-- /scale_rehearsal -->"


def markdown(report: dict[str, Any], command: str) -> str:
    """The results_standalone.md section: driver memory, equality, the killed worker, times (ratios side by side)."""
    ray, local, subset, q = report["ray"], report["local"], report["subset"], report["ray_quarter"]
    extra = report["frames"] - q["frames"]
    per_frame = (ray["rss_growth_mb"] - q["rss_growth_mb"]) * 1024 / extra if extra else 0.0
    return "\n".join([
        SECTION_START,
        "## Scale rehearsal (dataset-scope `region_outliers` on Ray)",
        "",
        f"`{command}`: {report['frames']:,} synthetic frames, {report['regions']:,} regions, "
        f"{report['tags']} tags, {report['dim']}-d embeddings generated per region (no pixels, no weights), "
        f"local Ray instance with {report['workers']} workers; one partition worker SIGKILLs itself half-way "
        "through each Ray run. Machine: " + report["cpu"] + ".",
        "",
        "| engine | frames | wall s | driver private memory before -> peak (MB) | growth MB | regions dropped |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ray (group-by per tag on workers) | {report['frames']:,} | {ray['seconds']:.1f} | "
        f"{ray['rss_before_mb']:.0f} -> {ray['rss_peak_mb']:.0f} | {ray['rss_growth_mb']:.0f} | {ray['dropped_regions']:,} |",
        f"| ray, a quarter of the frames | {q['frames']:,} | {q['seconds']:.1f} | "
        f"{q['rss_before_mb']:.0f} -> {q['rss_peak_mb']:.0f} | {q['rss_growth_mb']:.0f} | {q['dropped_regions']:,} |",
        f"| local (every embedding in the driver) | {report['frames']:,} | {local['seconds']:.1f} | "
        f"{local['rss_before_mb']:.0f} -> {local['rss_peak_mb']:.0f} | {local['rss_growth_mb']:.0f} | "
        f"{local['dropped_regions']:,} |",
        "",
        f"- Results equal the local engine's, frame by frame (SHA-256 of each frame's JSON): "
        f"**{report['full_equal']}** on all {report['frames']:,} frames, **{subset['equal']}** on a "
        f"{report['compare']:,}-frame subset; a worker was killed in both Ray runs "
        f"({ray['worker_killed']}, {subset['worker_killed']}) and the runs completed.",
        f"- Driver memory is its private resident memory (RssAnon), sampled every 50 ms; the input frames come "
        "from a generator and the surviving frames wait in a spool file between steps (`recognize/engines/"
        "frame_spool.py`), so the driver holds no per-frame data. Growth against N on Ray: "
        f"{q['rss_growth_mb']:.0f} MB at {q['frames']:,} frames, {ray['rss_growth_mb']:.0f} MB at "
        f"{report['frames']:,} ({per_frame:+.2f} KB per extra frame; before the spool it was ~0.8 KB per frame: "
        "29 MB at 25,000 and 84 MB at 100,000). The local engine holds every embedding "
        f"({report['regions']:,} x {report['dim']} float32 = {report['regions'] * report['dim'] * 4 / 2**20:.0f} MB) "
        "and every frame in the driver.",
        f"- Wall time: the Ray run took {ray['seconds'] / local['seconds']:.2f}x the local engine's on this "
        "2-core machine (shared with other work), where Ray's start-up, shuffles and a restarted worker "
        "cost more than the clustering itself; what the group-by buys is that the per-tag work and its "
        "memory spread over a cluster's nodes instead of one driver.",
        SECTION_END,
    ])


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else ""
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare", type=int, default=5_000, help="frames of the kill + equality subset")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--from-json", type=Path, default=None, help="skip the run: use this report")
    parser.add_argument("--results-md", type=Path, default=None,
                        help="write (or replace) the rehearsal's section of this file (benchmarks/results_standalone.md)")
    args = parser.parse_args(argv)
    import tempfile

    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        import ray

        init_ray(args.workers)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                report = rehearse(args.frames, args.workers, args.compare, Path(tmp))
        finally:
            ray.shutdown()
        report["cpu"] = cpu_line()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.results_md:
        command = (f"python benchmarks/scale_rehearsal.py --frames {report['frames']} "
                   f"--compare {report['compare']} --workers {report['workers']}")
        write_section(args.results_md, markdown(report, command))
    return 0 if report["subset"]["equal"] and report["full_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
