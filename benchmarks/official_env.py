"""The official Grounding DINO code's environment, for the baseline: the plugin's test oracle, reused.

rf-groundingdino (the official model code, as on the package index) builds only on transformers 4.x
while recognize runs on the current one, so the baseline's Grounding DINO runs in a process of its
own, in the very venv the parity tests build and cache
(`plugins/recognize-grounding-dino/tests/oracle_env.py`): one environment, built once, for both. Where
the package index is out of reach (a lent GPU machine), `RECOGNIZE_ORACLE_WHEELS=DIR` builds it from a
folder of wheels: rf-groundingdino 0.3.0, transformers 4.x and the tokenizers and huggingface_hub it
takes, addict, yapf and platformdirs (`pip download --no-deps ...` on a machine with the index).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_ORACLE = Path(__file__).resolve().parents[1] / "plugins" / "recognize-grounding-dino" / "tests" / "oracle_env.py"


def _oracle_env():
    spec = importlib.util.spec_from_file_location("recognize_gdino_oracle_env", _ORACLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_oracle = _oracle_env()
OfficialUnavailable = _oracle.OracleUnavailable


def official_python() -> Path:
    """The environment's interpreter, built on first use."""
    return _oracle.oracle_python()


if __name__ == "__main__":
    print(official_python())
