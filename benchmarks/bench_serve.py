"""Loopback load test of `recognize serve`: N concurrent clients x M requests against a tiny model,
beside the same images done sequentially (one client; and in-process, one image at a time).

    python benchmarks/bench_serve.py                      # 8 clients x 50 requests (400 images)
    python benchmarks/bench_serve.py --quick              # 4 clients x 4 requests, for the test suite

The server is a real `recognize serve` process on 127.0.0.1 (nothing else is reachable); the recipe is
the RAM tagger with the tiny reference fixture (official format, random weights), so the numbers show
the server's own overhead and what micro-batching buys, not a big model's compute. Every request is a
different image (crops of the reference photos), so the server's per-image result reuse never applies.
It stops by itself: bounded counts, a per-request timeout and an overall deadline.

Prints a JSON report (and writes it with --out): zero-error check, p50/p95 latency, throughput, the
server's RSS over the run (bounded: growth over the second half <= --rss-bound-mib), and the micro-batch sizes
read from /metrics. RSS is "stable" when the second half of the rounds adds no more than the bound
(glibc grows a malloc arena per busy thread during the first concurrent rounds; a leak keeps growing).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
SIMD_FLAGS = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512\w*|avx_vnni|amx\w*)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--size", type=int, default=224, help="side of each square test image")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternate concurrent and sequential passes over this many slices of the images, so "
                             "that load from other work on the machine hits both alike")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds before the whole run gives up")
    parser.add_argument("--rss-bound-mib", type=float, default=64.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="intra-op threads of the server (and of the in-process run); default: torch's")
    parser.add_argument("--quick", action="store_true", help="4 clients x 4 requests")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.rounds = 4, 4, 2
    return args


def machine() -> dict:
    import torch

    cpu, flags = platform.processor() or "?", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("?", "", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split() if SIMD_FLAGS.match(f))
    except OSError:
        pass
    return {"cpu": cpu, "simd_flags": flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_start": list(os.getloadavg())}


def test_images(count: int, size: int) -> list[bytes]:
    """`count` different JPEGs: square crops at shifting offsets of the reference photos."""
    from PIL import Image

    photos = sorted((REFERENCE / "data" / "images").rglob("*.jpg"))
    if not photos:
        raise SystemExit(f"no reference photos under {REFERENCE}")
    sources = []
    for path in photos:
        image = Image.open(path).convert("RGB")
        image.thumbnail((4 * size, 4 * size))
        sources.append(image)
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        step = i // len(sources)
        x = (step * 37) % max(1, image.width - size)
        y = (step * 53) % max(1, image.height - size)
        buffer = io.BytesIO()
        image.crop((x, y, x + size, y + size)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_recipe(folder: Path) -> Path:
    ram = REFERENCE / "fixtures" / "ram"
    if not (ram / "checkpoint.pth").is_file():
        raise SystemExit(f"the RAM fixture is missing under {ram}")
    recipe = {"recipe": 1, "name": "bench_serve", "settings": {"batch_size": 8, "device": "cpu"},
              "stages": [{"use": "ram", "with": {"config": str(ram / "config.json"),
                                                 "checkpoint": str(ram / "checkpoint.pth"), "batch_size": 8}}]}
    path = folder / "bench_serve.yaml"
    path.write_text(json.dumps(recipe))
    return path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load(url: str, images: list[bytes], clients: int, deadline: float) -> dict:
    """`clients` threads, each posting its share of `images` one after another."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    shares = [images[i::clients] for i in range(clients)]

    def client(share: list[bytes]) -> None:
        with httpx.Client(timeout=120) as http:
            for data in share:
                if time.monotonic() > deadline:
                    with lock:
                        errors.append("deadline")
                    return
                start = time.perf_counter()
                try:
                    response = http.post(f"{url}/v1/frames", content=data, headers={"content-type": "image/jpeg"})
                    ok = response.status_code == 200 and len(response.json()["frames"]) == 1
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if problem:
                        errors.append(problem)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": time.perf_counter() - start, "latencies": latencies, "errors": errors, "requests": len(images),
            "clients": clients}


def summary(passes: list[dict]) -> dict:
    """Several passes (rounds) of one kind, as one figure set."""
    latencies = [x for p in passes for x in p["latencies"]]
    errors = [e for p in passes for e in p["errors"]]
    wall = sum(p["wall_s"] for p in passes)
    requests = sum(p["requests"] for p in passes)
    return {"clients": passes[0]["clients"], "requests": requests, "errors": len(errors), "error_samples": errors[:3],
            "wall_s": round(wall, 3), "throughput_rps": round(requests / wall, 3),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None}


def _metric(metrics: str, name: str, stage: str, le: str | None = None) -> float:
    labels = f'le="{le}",stage="{stage}"' if le else f'stage="{stage}"'
    match = re.search(rf"^{name}{{{labels}}} (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


def batch_sizes(before: str, after: str, stage: str) -> dict:
    """Stage calls between two /metrics snapshots: how many, frames and requests per call."""
    def delta(name: str, le: str | None = None) -> float:
        return _metric(after, name, stage, le) - _metric(before, name, stage, le)

    calls = delta("recognize_batch_frames_count")
    single = delta("recognize_batch_requests_bucket", le="1.0")
    return {"stage_calls": int(calls),
            "mean_frames_per_call": round(delta("recognize_batch_frames_sum") / calls, 2) if calls else None,
            "mean_requests_per_call": round(delta("recognize_batch_requests_sum") / calls, 2) if calls else None,
            "calls_merging_requests": int(calls - single)}


def merge_batching(parts: list[dict]) -> dict:
    calls = sum(p["stage_calls"] for p in parts)
    frames = sum((p["mean_frames_per_call"] or 0) * p["stage_calls"] for p in parts)
    requests = sum((p["mean_requests_per_call"] or 0) * p["stage_calls"] for p in parts)
    return {"stage_calls": calls, "mean_frames_per_call": round(frames / calls, 2) if calls else None,
            "mean_requests_per_call": round(requests / calls, 2) if calls else None,
            "calls_merging_requests": sum(p["calls_merging_requests"] for p in parts)}


def in_process_sequential(recipe: Path, images: list[bytes], threads: int | None) -> dict:
    """The same images through `Pipeline`, one image per call, in this process (no HTTP).

    Run in a worker thread, as the server runs its stages: on a loaded machine torch's OpenMP pool
    behaves very differently when driven from the main thread, which would skew the comparison."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch
    from PIL import Image

    from recognize import Pipeline

    if threads:
        torch.set_num_threads(threads)
    pipeline = Pipeline.from_recipe(recipe)
    pipeline.load()
    arrays = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in images]

    def work() -> float:
        pipeline([arrays[0]])  # warm-up
        start = time.perf_counter()
        for array in arrays:
            pipeline([array])
        return time.perf_counter() - start

    with ThreadPoolExecutor(1) as pool:
        wall = pool.submit(work).result()
    return {"requests": len(arrays), "wall_s": round(wall, 3), "throughput_rps": round(len(arrays) / wall, 3)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    import httpx

    args = parse_args(argv)
    deadline = time.monotonic() + args.deadline
    report: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "machine": machine()}
    total = args.clients * args.requests
    images = test_images(total + 2 * args.clients, args.size)
    warmup, images = images[: 2 * args.clients], images[2 * args.clients :]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        recipe = write_recipe(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RECOGNIZE_HOME": str(Path(tmp) / "home"), "RECOGNIZE_OFFLINE": "1"}
        if args.torch_threads:
            env["OMP_NUM_THREADS"] = str(args.torch_threads)
        server = subprocess.Popen(
            [sys.executable, "-m", "recognize", "serve", str(recipe), "--host", "127.0.0.1", "--port", str(port),
             "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
             "--max-queue", str(4 * args.clients), "--log-level", "warning",
             "--result-cache-mb", "0"],  # every image is computed, also when the sequential pass repeats them
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server not ready before the deadline")
                time.sleep(0.2)
            load(url, warmup, args.clients, deadline)  # warm-up: batch shapes, allocator arenas, thread pools
            rss_start = rss_mib(server.pid)
            samples: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.25):
                    samples.append(rss_mib(server.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            concurrent, sequential, rounds_rss = [], [], []
            batching = {"concurrent": [], "sequential": []}
            for r in range(args.rounds):
                chunk = images[r::args.rounds]
                before = httpx.get(f"{url}/metrics").text
                concurrent.append(load(url, chunk, args.clients, deadline))
                middle = httpx.get(f"{url}/metrics").text
                sequential.append(load(url, chunk, 1, deadline))
                after = httpx.get(f"{url}/metrics").text
                batching["concurrent"].append(batch_sizes(before, middle, "ram"))
                batching["sequential"].append(batch_sizes(middle, after, "ram"))
                rounds_rss.append(round(rss_mib(server.pid), 1))
            report["concurrent"] = {**summary(concurrent), "batching": merge_batching(batching["concurrent"])}
            report["sequential_http"] = {**summary(sequential), "batching": merge_batching(batching["sequential"])}
            stop.set()
            sampler.join()
            rss_end = rss_mib(server.pid)
            half = rounds_rss[len(rounds_rss) // 2 - 1] if len(rounds_rss) > 1 else rss_start
            report["server_rss_mib"] = {"after_warmup": round(rss_start, 1), "after_each_round": rounds_rss,
                                        "end": round(rss_end, 1), "peak": round(max(samples or [rss_end]), 1),
                                        "growth": round(rss_end - rss_start, 1),
                                        "growth_second_half": round(rss_end - half, 1), "bound": args.rss_bound_mib}
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                report["server_exit_code"] = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                report["server_exit_code"] = "killed"
        report["sequential_in_process"] = in_process_sequential(recipe, images, args.torch_threads)
    concurrent, sequential = report["concurrent"], report["sequential_http"]
    report["speedup_vs_sequential_http"] = round(concurrent["throughput_rps"] / sequential["throughput_rps"], 2)
    report["speedup_vs_in_process"] = round(concurrent["throughput_rps"]
                                            / report["sequential_in_process"]["throughput_rps"], 2)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    checks = {"zero_errors": concurrent["errors"] == 0 and sequential["errors"] == 0,
              # steady state: what the second half of the run adds (the first rounds grow allocator arenas)
              "rss_stable": report["server_rss_mib"]["growth_second_half"] <= args.rss_bound_mib,
              "micro_batching_seen": concurrent["batching"]["calls_merging_requests"] > 0,
              "clean_exit": report["server_exit_code"] == 0}
    report["checks"] = checks
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
