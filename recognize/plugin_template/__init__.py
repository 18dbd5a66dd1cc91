"""Templates behind `recognize plugins new`: a ready-to-publish plugin package for one stage kind.

The files are `string.Template`s (`$name` placeholders) shipped inside the package, read with
importlib.resources, so the generator works from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from recognize.errors import InputError

KINDS = ("tagger", "localizer", "segmenter", "captioner", "output")
_NAME = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")

RECIPE_STAGES = {
    "tagger": "  - use: $stage\n    with: {threshold: 0.4}",
    "localizer": "  - use: ram_plus\n  - use: $stage",
    "segmenter": "  - use: ram_plus\n  - use: grounding_dino\n  - use: $stage",
    "captioner": "  - use: $stage",
    "output": "  - use: ram_plus\noutputs:\n  - use: $stage\n    with: {scores: true}",
}
PYTHON_EXAMPLE = {
    "tagger": 'for frame in Pipeline([$cls(threshold=0.4)]).run(["photos/"]):\n    print(frame.name, frame.tag_names)',
    "localizer": 'from recognize.taggers.ram_stages import RamPlus\n\n'
                 'for frame in Pipeline([RamPlus(), $cls()]).run(["photos/"]):\n'
                 '    print(frame.name, [(r.tag, r.box) for r in frame.regions])',
    "segmenter": 'from recognize.taggers.ram_stages import RamPlus\nfrom recognize_grounding_dino import GroundingDino\n\n'
                 'for frame in Pipeline([RamPlus(), GroundingDino(), $cls()]).run(["photos/"]):\n'
                 '    print(frame.name, [int(r.mask.sum()) for r in frame.regions if r.mask is not None])',
    "captioner": 'for frame in Pipeline([$cls()]).run(["photos/"]):\n    print(frame.name, frame.caption)',
    "output": 'from recognize.runner import run_to_folder\n\nrun_to_folder(Pipeline([], outputs=[$cls()]), ["photos/"], "out/")',
}


@dataclass(frozen=True)
class PluginNames:
    """Every name the package uses, derived from the one the author gives."""

    dist: str  # recognize-blur-check   (PyPI, pip install)
    module: str  # recognize_blur_check  (import)
    stage: str  # blur_check             (recipes: `use: blur_check`)
    cls: str  # BlurCheck                (Python)

    @classmethod
    def from_name(cls, name: str) -> PluginNames:
        given = name.strip().lower()
        if not _NAME.match(given):
            raise InputError(f"plugin name {name!r}: use lowercase letters, digits and '-' "
                             "(e.g. 'blur-check'), starting with a letter")
        base = given.removeprefix("recognize-").removeprefix("recognize_") or given
        stage = base.replace("-", "_")
        if keyword.iskeyword(stage):
            raise InputError(f"plugin name {name!r} gives the stage name {stage!r}, a Python keyword; pick another")
        dist = f"recognize-{stage.replace('_', '-')}"
        return cls(dist=dist, module=dist.replace("-", "_"), stage=stage,
                   cls="".join(part.capitalize() for part in stage.split("_")))


def _template(name: str) -> Template:
    return Template(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))


def render(name: str, kind: str = "tagger") -> dict[str, str]:
    """Relative path -> file text of a new plugin package called `name` with one stage of `kind`."""
    from recognize import __version__

    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    names = PluginNames.from_name(name)
    values = {
        "dist": names.dist, "module": names.module, "stage": names.stage, "cls": names.cls, "kind": kind,
        "hook": "register_outputs" if kind == "output" else "register_stages",
        "description": f"A recognize {kind} stage: {names.stage}.",
        "recognize_version": ".".join(__version__.split(".")[:2]),
    }
    values["recipe_stages"] = Template(RECIPE_STAGES[kind]).substitute(values)
    values["python_example"] = Template(PYTHON_EXAMPLE[kind]).substitute(values)
    return {
        "pyproject.toml": _template("pyproject.toml.tmpl").substitute(values),
        "README.md": _template("README.md.tmpl").substitute(values),
        f"{names.module}/__init__.py": _template("__init__.py.tmpl").substitute(values),
        f"{names.module}/plugin.py": _template("plugin.py.tmpl").substitute(values),
        f"{names.module}/stage.py": _template(f"kinds/{kind}.py.tmpl").substitute(values),
        f"tests/test_{names.stage}.py": _template(f"kinds/test_{kind}.py.tmpl").substitute(values),
    }


def write_plugin(name: str, kind: str = "tagger", directory: str | Path = ".") -> Path:
    """Write the package into `directory/<distribution name>`; refuses to touch an existing folder."""
    files = render(name, kind)
    root = Path(directory) / PluginNames.from_name(name).dist
    if root.exists():
        raise InputError(f"{root} already exists; remove it or choose another name or --directory")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
