"""`recognize serve` as a real process: uvicorn on 127.0.0.1, SIGTERM with requests in flight,
a client that disconnects, and the CLI's refusals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import TEST_RECIPE, png_bytes, write_recipe

pytestmark = [pytest.mark.subprocess]
REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "RECOGNIZE_PLUGINS": "teststages,servestages", **extra}


class Server:
    def __init__(self, recipe: Path, *args: str, **environ: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "recognize", "serve", str(recipe), "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(**environ))

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server never became ready")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out


@pytest.fixture
def slow_recipe(tmp_path) -> Path:
    return write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "brightness", "with": {"delay": 1.5}},
                                                             {"use": "center_box"}]})


def test_sigterm_drains_requests_in_flight_then_exits_0(slow_recipe) -> None:
    server = Server(slow_recipe, "--max-batch-size", "2", "--max-wait-ms", "200")
    try:
        server.wait_ready()
        results: list = []

        def post(value: int) -> None:
            response = httpx.post(f"{server.url}/v1/frames", content=png_bytes(value),
                                  headers={"content-type": "image/png"}, timeout=60)
            results.append(response)

        threads = [threading.Thread(target=post, args=(v,)) for v in (30, 220, 240)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while "recognize_queue_depth 3.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=60) == 0
    finally:
        log = server.stop()
    assert sorted(r.status_code for r in results) == [200, 200, 200], log
    names = sorted(r.json()["frames"][0]["tags"][0]["name"] for r in results)
    assert names == ["bright", "bright", "dark"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_a_client_that_disconnects_frees_its_slot(slow_recipe) -> None:
    server = Server(slow_recipe, "--max-queue", "1")
    try:
        server.wait_ready()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/frames", content=png_bytes(), headers={"content-type": "image/png"},
                       timeout=httpx.Timeout(5, read=0.4))
        deadline = time.monotonic() + 1.2  # well before the 1.5 s stage call ends
        while "recognize_queue_depth 0.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, "slot not freed"
            time.sleep(0.05)
        response = httpx.post(f"{server.url}/v1/frames", content=png_bytes(), headers={"content-type": "image/png"},
                              timeout=60)
        assert response.status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'recognize_requests_total{route="/v1/frames",status="499"} 1.0' in metrics
    finally:
        server.stop()


def test_cli_refuses_a_public_address_without_token(slow_recipe) -> None:
    result = subprocess.run([sys.executable, "-m", "recognize", "serve", str(slow_recipe), "--host", "0.0.0.0"],
                            capture_output=True, text=True, env=env(), timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--token" in result.stderr and "Traceback" not in result.stderr


def test_cli_token_from_the_environment(slow_recipe) -> None:
    server = Server(slow_recipe, RECOGNIZE_SERVE_TOKEN="t0ken")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert httpx.get(f"{server.url}/v1/recipe").status_code == 401
        assert httpx.get(f"{server.url}/v1/recipe", headers={"authorization": "Bearer t0ken"}).status_code == 200
    finally:
        server.stop()


def test_cli_bad_recipe_exits_2_and_missing_weights_exit_3(tmp_path) -> None:
    missing = subprocess.run([sys.executable, "-m", "recognize", "serve", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, env=env(), timeout=120, check=False)
    assert missing.returncode == 2 and "no such recipe file" in missing.stderr
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "slow_load"}]})
    server = Server(recipe, SERVESTAGES_LOAD_FAILS="1")
    assert server.process.wait(timeout=120) == 3
    out = server.stop()
    assert "error: cannot serve" in out and "weights.bin: not found" in out and "Traceback" not in out


def test_help_lists_serve_without_importing_fastapi() -> None:
    code = ("import sys; from recognize.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('fastapi' in sys.modules, 'uvicorn' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120,
                            check=True)
    assert "serve" in result.stdout and result.stdout.strip().endswith("False False")


def test_cli_busy_port_is_one_line_exit_2_before_loading(tmp_path) -> None:
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "slow_load"}]})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "recognize", "serve", str(recipe), "--port", str(port)],
                                capture_output=True, text=True, env=env(SERVESTAGES_LOAD_FAILS="1"), timeout=120,
                                check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_cli_a_gpu_this_machine_lacks_exits_2_in_one_error_line(tmp_path) -> None:
    """A setting the machine cannot honour is exit 2 (bad input), not 3 (weights): the load's own exit code."""
    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [{"use": "ram_plus"}]})
    result = subprocess.run([sys.executable, "-m", "recognize", "serve", str(recipe), "--port", "0", "--device", "cuda"],
                            capture_output=True, text=True, timeout=300, check=False,
                            env=env(RECOGNIZE_OFFLINE="1", RECOGNIZE_HOME=str(tmp_path / "home")))
    assert result.returncode == 2, result.stderr  # not 3: no weights are looked for first
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ram_plus: device cuda, but torch cannot use a CUDA GPU here" in errors[0]
    assert "Traceback" not in result.stderr
