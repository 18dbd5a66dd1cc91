"""Running the `recognize` CLI in a subprocess, with the test stages registered."""

from __future__ import annotations

import os
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running the `recognize` CLI in a subprocess with the test stages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RECOGNIZE_PLUGINS"] = "teststages"
    env.update(extra)
    return env
