import pytest

from recognize.errors import RecipeError
from recognize.pipeline import Pipeline
from recognize.recipe import load_recipe, parse_recipe

GOOD = """\
recipe: 1
name: demo
settings: {batch_size: 3}
stages:
  - use: brightness
    with: {cutoff: 100}
  - use: center_box
    with:
      score: 0.5
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_recipe_and_python_build_the_same_pipeline(tmp_path, test_stages):
    from_yaml = Pipeline.from_recipe(write(tmp_path, GOOD))
    by_hand = Pipeline([test_stages.Brightness(cutoff=100), test_stages.CenterBox(score=0.5)], batch_size=3, name="demo")
    assert from_yaml.describe() == by_hand.describe()
    assert from_yaml.stages[0].params.cutoff == 100


@pytest.mark.parametrize(
    "text,expected",
    [
        ("recipe: 1\nstages:\n  - use: brightness\n    with: {cutoff: [1\n", r"r\.yaml:\d+:\d+: YAML syntax error"),
        ("recipe: 1\nstages:\n  - use: brightnes\n", r"r\.yaml:3: stages\[0\]\.use: unknown stage 'brightnes' \(did you mean 'brightness'\?\); available: .*center_box"),
        ("recipe: 1\nstages:\n  - use: brightness\n  - use: center_box\n    with: {scor: 1}\n",
         r"r\.yaml:5: stages\[1\]\.with\.scor: unknown parameter; did you mean 'score'\? valid parameters: score"),
        ("recipe: 1\nstages:\n  - use: center_box\n    with: {score: high}\n",
         r"stages\[0\]\.with\.score: Input should be a valid number.*\(got 'high'\)"),
        ("recipe: 1\nstages:\n  - with: {score: 1}\n", r"stages\[0\]\.use: required field is missing"),
        ("recipe: 2\nstages:\n  - use: brightness\n", r"r\.yaml:1: recipe: Input should be 1"),
        ("recipe: 1\nstages: []\n", r"`stages` is empty"),
        ("- just a list\n", r"a recipe is a mapping"),
        ("recipe: 1\nstages:\n  - use: brightness\nstagse: []\n", r"r\.yaml:4: stagse: unknown parameter"),
    ],
)
def test_recipe_errors_name_the_place_and_the_fix(tmp_path, test_stages, text, expected):
    with pytest.raises(RecipeError, match=expected) as info:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_output_and_stage_sections_are_checked(tmp_path, test_stages):
    with pytest.raises(RecipeError, match="is an output; list it under `outputs:`"):
        load_recipe(write(tmp_path, "recipe: 1\nstages:\n  - use: json\n"))
    with pytest.raises(RecipeError, match="is a tagger stage; list it under `stages:`"):
        load_recipe(write(tmp_path, "recipe: 1\nstages:\n  - use: brightness\noutputs:\n  - use: brightness\n"))


def test_set_overrides_values(tmp_path, test_stages):
    path = write(tmp_path, GOOD)
    recipe = load_recipe(path, ["stages.1.with.score=0.25", "settings.batch_size=2", "stages.0.with.cutoff=7"])
    assert recipe.stages[1].with_ == {"score": 0.25}
    assert recipe.settings.batch_size == 2
    assert recipe.stages[0].with_ == {"cutoff": 7}
    # a stage without `with:` gets one
    assert parse_recipe("recipe: 1\nstages:\n  - use: center_box\n", overrides=["stages.0.with.score=0.1"]).stages[0].with_ == {"score": 0.1}


@pytest.mark.parametrize(
    "override,expected",
    [
        ("stages.5.with.score=1", r"'stages\.5' is not an index of a 2-item list"),
        ("stages.1.with.score", r"expected KEY=VALUE"),
        ("stages.1.with.score=oops", r"stages\[1\]\.with\.score: Input should be a valid number"),
        ("nothing.here=1", r"the recipe has no 'nothing'"),
    ],
)
def test_bad_overrides(tmp_path, test_stages, override, expected):
    with pytest.raises(RecipeError, match=expected):
        load_recipe(write(tmp_path, GOOD), [override])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")
