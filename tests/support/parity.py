"""The official-code parity fixtures (`../shared/reference/fixtures` or $RECOGNIZE_PARITY_FIXTURES),
read the same way by every parity test: any folder whose `config.json` names the model counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from recognize.taggers.tagger_stage import config_asset

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("RECOGNIZE_PARITY_FIXTURES", REPO.parent / "shared" / "reference" / "fixtures"))
TOLERANCE = 1e-5


def fixture_folders(*models: str) -> list[Path]:
    """Every fixture folder whose config names one of `models`, sorted."""
    if not FIXTURES.is_dir():
        return []
    return [
        folder
        for folder in sorted(p for p in FIXTURES.iterdir() if (p / "config.json").is_file())
        if json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model") in models
    ]


class ParityFixture:
    """One fixture folder: its config, the official outputs and the stored inputs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
        self.tensors = torch.load(folder / "expected.pt", weights_only=True)
        self.inputs = torch.load(folder / "inputs.pt", weights_only=True)

    def asset(self, key: str) -> Path:
        """A file the config names (relative to the fixture folder or one of its parents)."""
        found = config_asset(self.folder / "config.json", self.config[key])
        if found is None:
            raise FileNotFoundError(self.config[key])
        return found

    def images(self) -> list[Path]:
        # config: paths relative to the reference data/ folder, a sibling of the fixtures folder
        return [self.folder.parent.parent / "data" / f for f in self.config["images"]["files"]]
