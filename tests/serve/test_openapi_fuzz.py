"""Property-based fuzzing from the server's own OpenAPI document (schemathesis): whatever a client
sends, valid or malformed, the answer is never a 5xx.

The server runs for real (uvicorn on 127.0.0.1, in a thread of this process) over the fast test
stages; the number of examples per operation is bounded so the whole run takes well under a minute.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")
uvicorn = pytest.importorskip("uvicorn")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from .conftest import TEST_RECIPE, write_recipe  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    import teststages

    from recognize import plugins
    from recognize.serve import ServeSettings, create_app

    stack = contextlib.ExitStack()
    stack.enter_context(plugins.registered(teststages, name="teststages"))
    recipe = write_recipe(tmp_path_factory.mktemp("fuzz"), TEST_RECIPE)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(recipe, ServeSettings(port=port, max_images=4, max_upload_mb=2))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    import httpx

    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    SERVER["url"] = f"http://127.0.0.1:{port}"
    loaded = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    # valid and malformed requests alike (wrong types, missing bodies, out-of-schema values)
    loaded.config.generation.update(modes=list(schemathesis.GenerationMode), deterministic=True)
    yield loaded
    server.should_exit = True
    thread.join(timeout=30)
    stack.close()


SERVER: dict[str, str] = {}
schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_on_any_request(case) -> None:
    case.call_and_validate(checks=[not_a_server_error], timeout=30)


def test_the_fuzzer_reached_every_route(api_schema) -> None:
    """(Runs after the fuzzing above, on the same server.) The requests were really sent and answered."""
    import re

    import httpx

    metrics = httpx.get(f"{SERVER['url']}/metrics").text
    answered = {}
    pattern = r'recognize_requests_total\{route="([^"]+)",status="(\d+)"\} (\S+)'
    for route, status, count in re.findall(pattern, metrics):
        answered.setdefault(route, {})[status] = float(count)
    for route in ("/v1/frames", "/v1/annotate", "/v1/recipe", "/v1/stages", "/healthz", "/metrics"):
        assert sum(answered.get(route, {}).values()) >= 1, route
    assert sum(answered["/v1/frames"].values()) >= 10
    assert not [s for statuses in answered.values() for s in statuses if s.startswith("5")]
