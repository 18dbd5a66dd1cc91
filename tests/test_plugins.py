"""The plugin contract (recognize.hookspecs): discovery, validation, clashes, broken plugins.

In-process checks use real little plugin objects registered with `plugins.registered`; the
"never takes the tool down" checks run the real CLI in a subprocess with plugin modules on
RECOGNIZE_PLUGINS and a plugin distribution pip-installed into a private folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import recognize
from recognize import OutputStage, Stage, StageParams, hookimpl, plugins
from recognize.errors import RecipeError
from recognize.hub import ModelCard, ModelFile

REPO = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "support"


def test_builtins_register_through_the_hooks():
    names = {info.name for info in plugins.plugin_infos()}
    assert "recognize.outputs.builtin" in names
    registry = plugins.stages()
    assert {"json", "annotated_image", "coco", "yolo", "ram"} <= set(registry)
    assert plugins.plugin_problems() == []


def test_unknown_stage_names_the_choices():
    with pytest.raises(plugins.UnknownStageError, match="available: .*json"):
        plugins.get_stage("nope")


# -- validation --------------------------------------------------------------------------------


class Good(Stage):
    name = "good_test_stage"
    kind = "filter"

    def process(self, frames):
        return frames


class NoName(Stage):
    kind = "filter"


class EmptyName(Stage):
    name = ""
    kind = "filter"


class BadKind(Stage):
    name = "bad_kind"
    kind = "detector"


class BadScope(Stage):
    name = "bad_scope"
    kind = "filter"
    scope = "video"


class BadParams(Stage):
    name = "bad_params"
    kind = "filter"
    Params = dict  # type: ignore[assignment]


class AnOutput(OutputStage):
    name = "an_output"


class Messy:
    """A plugin that registers one good stage among everything the contract rejects."""

    @hookimpl
    def register_stages(self, register):
        for item in (42, "ram", NoName, EmptyName, BadKind, BadScope, BadParams, AnOutput, Good, Good):
            register(item)

    @hookimpl
    def register_outputs(self, register):
        register(Good)  # not an OutputStage

    @hookimpl
    def register_models(self, register):
        register({"name": "not-a-card"})


def test_registration_validates_and_names_the_plugin():
    with plugins.registered(Messy(), name="messy"):
        assert plugins.get_stage("good_test_stage") is Good
        problems = [str(p) for p in plugins.plugin_problems()]
        assert all(p.startswith("plugin 'messy': ") for p in problems), problems
        text = "\n".join(problems)
        assert "got 42 (int), not a Stage subclass" in text
        assert "got 'ram' (str)" in text
        assert "NoName.name is None" in text and "EmptyName.name is ''" in text
        assert "kind 'detector' is not one of tagger, localizer, segmenter, captioner, filter" in text
        assert "scope 'video' is not one of image, dataset" in text
        assert "bad_params" in text and "not a StageParams subclass" in text
        assert "AnOutput is an OutputStage: register it with register_outputs" in text
        assert "Good, which is not an OutputStage subclass" in text
        assert "not a recognize.hub.ModelCard" in text
        for rejected in ("bad_kind", "bad_scope", "bad_params", "an_output"):
            assert plugins.find_stage(rejected) is None
        info = next(i for i in plugins.plugin_infos() if i.name == "messy")
        assert info.stages == ["good_test_stage"] and len(info.problems) == len(problems)
    assert plugins.find_stage("good_test_stage") is None
    assert plugins.plugin_problems() == []


class RamNamedOutput(OutputStage):
    """An output that happens to be called like the RAM tagger."""

    name = "ram"


class Clashing:
    @hookimpl
    def register_outputs(self, register):
        register(RamNamedOutput)

    @hookimpl
    def register_models(self, register):
        register(ModelCard("ram-tag-lists", (ModelFile("other.txt", "http://127.0.0.1:9/other.txt"),)))


def test_a_clash_is_never_last_wins_and_a_qualified_name_picks_one(tmp_path):
    from recognize.taggers.ram_stages import Ram

    with plugins.registered(Clashing(), name="clashing"):
        with pytest.raises(plugins.AmbiguousStageError) as caught:
            plugins.get_stage("ram")
        message = str(caught.value)
        assert "recognize (built in) and clashing" in message
        assert "'recognize:ram' or 'clashing:ram'" in message
        assert plugins.get_stage("recognize:ram") is Ram
        assert plugins.get_stage("clashing:ram") is RamNamedOutput
        assert plugins.get_stage("Clashing:ram") is RamNamedOutput  # qualifiers compare like PEP 503 names
        # what a manifest or a Ray worker rebuilds the stage from names the very same class
        assert Ram(threshold=0.5).describe() == {"use": "recognize:ram", "with": {"threshold": 0.5}}
        assert plugins.get_stage(RamNamedOutput().describe()["use"]) is RamNamedOutput
        assert plugins.get_stage("ram_plus")().describe()["use"] == "ram_plus"
        listing = plugins.stages()
        assert "ram" not in listing and {"recognize:ram", "clashing:ram", "ram_plus"} <= set(listing)
        # the first card keeps its name; the clash is reported, naming the plugin
        assert plugins.model_cards()["ram-tag-lists"].file("ram_tag_list.txt")
        assert any(p.plugin == "clashing" and "already registered by 'recognize'" in p.problem
                   for p in plugins.plugin_problems())

        # only a recipe that uses the ambiguous name fails
        from recognize.recipe import load_recipe

        ok = tmp_path / "ok.yaml"
        ok.write_text("recipe: 1\nstages:\n  - use: ram_plus\noutputs:\n  - use: json\n")
        load_recipe(ok)
        bad = tmp_path / "bad.yaml"
        bad.write_text("recipe: 1\nstages:\n  - use: ram\n")
        with pytest.raises(RecipeError, match=r"bad.yaml:3: stages\[0\].use: stage 'ram' is registered by"):
            load_recipe(bad)
        qualified = tmp_path / "qualified.yaml"
        qualified.write_text("recipe: 1\nstages:\n  - use: recognize:ram\n")
        assert load_recipe(qualified).stages[0].use == "recognize:ram"
    assert plugins.get_stage("ram") is Ram


def test_reset_forgets_every_plugin_and_problem(monkeypatch, tmp_path):
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RECOGNIZE_PLUGINS", "raises_at_import")
    plugins.reset()
    try:
        assert [p.plugin for p in plugins.plugin_problems()] == ["raises_at_import"]
        assert "recognize-sam" in {i.name for i in plugins.plugin_infos()}
        monkeypatch.delenv("RECOGNIZE_PLUGINS")
        monkeypatch.setenv("RECOGNIZE_LOAD_PLUGINS", "")
        plugins.reset()
        assert plugins.plugin_problems() == []
        infos = {i.name for i in plugins.plugin_infos()}
        assert "recognize-sam" not in infos and "raises_at_import" not in infos
        assert plugins.find_stage("sam") is None
    finally:
        plugins.reset()


def test_load_plugins_env_selects_distributions(monkeypatch):
    monkeypatch.setenv("RECOGNIZE_LOAD_PLUGINS", "recognize_sam")  # any spelling of the distribution name
    plugins.reset()
    try:
        assert plugins.find_stage("sam") is not None
        assert plugins.find_stage("grounding_dino") is None
        assert plugins.get_stage("recognize-sam:sam") is plugins.get_stage("sam")
    finally:
        plugins.reset()


# -- through the CLI ---------------------------------------------------------------------------

BROKEN_MODULES = {
    "plug_bad_signature": """
        import recognize

        @recognize.hookimpl
        def register_stages(registrar):  # the spec's argument is `register`
            pass
    """,
    "plug_hook_raises": """
        import recognize

        @recognize.hookimpl
        def register_stages(register):
            raise RuntimeError("cannot find my weights")
    """,
    "plug_registers_42": """
        import recognize

        @recognize.hookimpl
        def register_stages(register):
            register(42)
    """,
    "plug_import_raises": """
        raise ImportError("needs a library that is not installed")
    """,
    "plug_hook_typo": """
        import recognize

        @recognize.hookimpl
        def register_stage(register):  # no such hook: it would silently never run
            pass
    """,
    "plug_command_raises": """
        import recognize

        @recognize.hookimpl
        def register_commands(cli):
            raise ValueError("no commands today")
    """,
}


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "recognize", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def cli_env(*paths: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def broken_plugins_dir(tmp_path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name, source in BROKEN_MODULES.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


@pytest.fixture
def bright_image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "white.png"
    Image.new("RGB", (16, 16), (250, 250, 250)).save(path)
    return path


@pytest.mark.subprocess
@pytest.mark.slow
def test_broken_plugins_are_reported_and_skipped(broken_plugins_dir, bright_image, tmp_path):
    env = cli_env(broken_plugins_dir, RECOGNIZE_PLUGINS=",".join(["teststages", *BROKEN_MODULES]))

    listed = cli("plugins", env=env)
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert "plug_bad_signature" in out and "registrar" in out
    assert "plug_hook_raises" in out and "register_stages raised RuntimeError: cannot find my weights" in out
    assert "plug_registers_42" in out and "got 42 (int), not a Stage subclass" in out
    assert "plug_import_raises" in out and "needs a library that is not installed" in out
    assert "plug_command_raises" in out and "register_commands raised ValueError: no commands today" in out
    assert "implements 'register_stage', which is no recognize hook" in out

    as_json = {i["name"]: i for i in json.loads(cli("plugins", "--json", env=env).stdout)}
    assert as_json["plug_hook_raises"]["problems"] and as_json["teststages"]["problems"] == []

    recipe = tmp_path / "bright.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: brightness\n")
    run = cli("run", recipe, bright_image, "-o", tmp_path / "out", "-q", env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "out" / "frames" / "white.png.json").read_text())["tags"][0]["name"] == "bright"
    for name in BROKEN_MODULES:
        assert name in run.stderr  # each one named in a warning, none fatal
    assert "Traceback" not in run.stderr

    help_text = cli("--help", env=env)
    assert help_text.returncode == 0 and "run" in help_text.stdout


def _build_dist(root: Path, dist: str, module: str, body: str) -> Path:
    source = root / dist
    (source / module).mkdir(parents=True)
    (source / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.3.0"

        [project.entry-points.recognize]
        {module} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """))
    (source / module / "__init__.py").write_text(textwrap.dedent(body))
    return source


def _pip_install(target: Path, *sources: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), *map(str, sources)], check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def clash_site(tmp_path_factory) -> Path:
    """Two distributions: `recognize-bright-clash`, whose stage is called `brightness` like the test
    stage, and `recognize-broken-ep`, whose entry point fails to import."""
    root = tmp_path_factory.mktemp("dists")
    source = _build_dist(root, "recognize-bright-clash", "bright_clash", """
        import recognize
        from recognize import Stage, StageParams, Tag


        class Brightness(Stage):
            '''Always tags `clash`.'''

            name = "brightness"
            kind = "tagger"

            def process(self, frames):
                for frame in frames:
                    frame.tags.append(Tag(name="clash", score=1.0, source=self.name))
                return frames


        @recognize.hookimpl
        def register_stages(register):
            register(Brightness)
    """)
    broken = _build_dist(root, "recognize-broken-ep", "broken_ep", """
        raise ImportError("broken_ep needs libfoo, which is not installed")
    """)
    target = root / "site"
    _pip_install(target, source, broken)
    return target


@pytest.mark.subprocess
@pytest.mark.slow
def test_installed_plugins_that_clash_or_break_leave_the_rest_working(clash_site, bright_image, tmp_path):
    env = cli_env(clash_site, RECOGNIZE_PLUGINS="teststages")
    env.pop("RECOGNIZE_LOAD_PLUGINS", None)  # every installed plugin, as for a user

    stages = cli("stages", env=env)
    assert stages.returncode == 0, stages.stderr
    assert "recognize-bright-clash:brightness" in stages.stdout and "teststages:brightness" in stages.stdout
    assert "warning: plugin 'recognize-broken-ep': it failed to import (broken_ep needs libfoo" in stages.stderr

    listed = {i["name"]: i for i in json.loads(cli("plugins", "--json", env=env).stdout)}
    assert listed["recognize-bright-clash"]["version"] == "0.3.0"
    assert listed["recognize-bright-clash"]["stages"] == ["brightness"]
    assert "broken_ep needs libfoo" in listed["recognize-broken-ep"]["problems"][0]

    recipe = tmp_path / "bright.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: brightness\n")
    ambiguous = cli("run", recipe, bright_image, "-o", tmp_path / "out", "-q", env=env)
    assert ambiguous.returncode == 2
    [error] = [line for line in ambiguous.stderr.splitlines() if not line.startswith("warning: ")]
    assert error.startswith("error: "), ambiguous.stderr
    assert "stage 'brightness' is registered by recognize-bright-clash 0.3.0 and teststages" in ambiguous.stderr
    assert "'recognize-bright-clash:brightness' or 'teststages:brightness'" in ambiguous.stderr

    for use, tag in (("teststages:brightness", "bright"), ("recognize_bright_clash:brightness", "clash")):
        recipe.write_text(f"recipe: 1\nstages:\n  - use: {use}\n")
        out = tmp_path / use.replace(":", "_")
        run = cli("run", recipe, bright_image, "-o", out, "-q", env=env)
        assert run.returncode == 0, run.stderr
        assert [t["name"] for t in json.loads((out / "frames" / "white.png.json").read_text())["tags"]] == [tag]

    other = tmp_path / "other.yaml"
    other.write_text("recipe: 1\nstages:\n  - use: center_box\noutputs:\n  - use: json\n")
    assert cli("run", other, bright_image, "-o", tmp_path / "other", "-q", env=env).returncode == 0


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install examples/recognize-color-tags into a private target folder."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "recognize-color-tags"  # pip builds in the source folder
    shutil.copytree(REPO / "examples" / "recognize-color-tags", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    _pip_install(target, source)
    return target


@pytest.mark.subprocess
@pytest.mark.slow
def test_example_plugin_is_discovered_and_usable(installed_example, tmp_path):
    env = cli_env(installed_example)
    env.pop("RECOGNIZE_PLUGINS", None)
    env.pop("RECOGNIZE_LOAD_PLUGINS", None)
    listed = cli("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    infos = {i["name"]: i for i in json.loads(listed.stdout)}
    assert infos["recognize-color-tags"]["version"] == "0.1.0"
    assert infos["recognize-color-tags"]["stages"] == ["color_tags"]

    from PIL import Image

    Image.new("RGB", (20, 20), (250, 10, 10)).save(tmp_path / "red.png")
    recipe = tmp_path / "colors.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: recognize-color-tags:color_tags\n    with: {min_fraction: 0.5}\n")
    result = cli("run", recipe, tmp_path / "red.png", "-o", tmp_path / "out", "-q", env=env)
    assert result.returncode == 0, result.stderr
    frame = json.loads((tmp_path / "out" / "frames" / "red.png.json").read_text())
    assert [(t["name"], t["source"]) for t in frame["tags"]] == [("red", "color_tags")]


@pytest.mark.subprocess
def test_registering_every_stage_imports_no_heavy_library():
    """`recognize stages`, `--help` and recipe validation register everything: that must stay light."""
    code = textwrap.dedent("""
        import sys
        from recognize import plugins
        assert plugins.plugin_problems() == [], plugins.plugin_problems()
        names = set(plugins.stages()) | set(plugins.model_cards())
        assert {"ram", "tag2text_caption", "region_outliers", "grounding_dino", "sam", "sam2", "owlv2",
                "tiled"} <= names, names
        heavy = [m for m in ("torch", "torchvision", "transformers", "segment_anything", "sam2", "timm",
                             "open_clip", "tokenizers", "click") if m in sys.modules]
        print(",".join(heavy))
    """)
    env = dict(os.environ, RECOGNIZE_LOAD_PLUGINS="recognize-grounding-dino,recognize-sam,recognize-sam2,"
                                                  "recognize-owlv2,recognize-tiles")
    env.pop("RECOGNIZE_PLUGINS", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_hookspecs_state_the_contract():
    from recognize import hookspecs

    for name in ("register_stages", "register_outputs", "register_models", "register_commands"):
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and spec.__annotations__
    assert "PLUGIN:NAME" in hookspecs.__doc__ and "model_files" in hookspecs.__doc__
    assert recognize.hookimpl is hookspecs.hookimpl
    assert StageParams in Good.Params.__mro__
