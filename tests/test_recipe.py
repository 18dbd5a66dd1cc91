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


# -- recipes cannot blow up: every problem is a one-line RecipeError when the file loads ----------
TAGGER_USER = """\
recipe: 1
stages:
  - use: brightness
    with: &tagger {cutoff: 100}
  - use: center_box
  - use: box_mask
  - use: region_confirm
    with:
      tagger: brightness
      tagger_with: {treshold: 0.5}
"""


def test_nested_stage_parameters_are_validated_with_their_path(tmp_path, test_stages):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, TAGGER_USER))
    assert str(info.value).startswith(f"{tmp_path / 'r.yaml'}:10: stages[3].with.tagger_with.treshold: unknown parameter")
    assert "valid parameters: cutoff" in str(info.value)
    unknown = TAGGER_USER.replace("tagger: brightness", "tagger: brightnes")
    with pytest.raises(RecipeError, match=r"r\.yaml:9: stages\[3\]\.with\.tagger: unknown stage 'brightnes' \(did you mean 'brightness'"):
        load_recipe(write(tmp_path, unknown))
    wrong_type = TAGGER_USER.replace("{treshold: 0.5}", "{cutoff: lots}")
    with pytest.raises(RecipeError, match=r"stages\[3\]\.with\.tagger_with\.cutoff: Input should be a valid number"):
        load_recipe(write(tmp_path, wrong_type))
    good = TAGGER_USER.replace("{treshold: 0.5}", "*tagger")
    assert load_recipe(write(tmp_path, good)).stages[3].with_["tagger_with"] == {"cutoff": 100}


def test_a_typo_in_tagger_with_fails_in_python_when_the_stage_is_built(test_stages):
    from pydantic import ValidationError

    from recognize.data_engine.confirm_stage import RegionConfirm

    with pytest.raises(ValidationError, match="treshold"):
        RegionConfirm(tagger="brightness", tagger_with={"treshold": 0.5})


@pytest.mark.parametrize(
    "text,expected",
    [
        ("recipe: 1\nsettings: {batch_size: true}\nstages:\n  - use: brightness\n",
         r"r\.yaml:2: settings\.batch_size: expected a number, got a boolean"),
        ("recipe: 1\nstages:\n  - use: brightness\n    with: {cutoff: false}\n",
         r"stages\[0\]\.with\.cutoff: expected a number, got a boolean"),
        ("recipe: 1\nstages:\n  - use: brightness\nstages:\n  - use: center_box\n",
         r"r\.yaml:4:1: key 'stages' is given twice \(lines 2 and 4\)"),
        ("recipe: 1\nstages:\n  - use: brightness\n    with: &w {cutoff: [1, *w]}\n", r"self-referencing"),
        ("recipe: 1\nstages: " + "[" * 3000 + "]" * 3000 + "\n", r"r\.yaml: nested too deeply"),
        ("recipe: 1\nsettings: {batch_size: 100000000}\nstages:\n  - use: brightness\n",
         r"settings\.batch_size: Input should be less than or equal to 4096"),
    ],
    ids=["bool-settings", "bool-param", "duplicate", "self-reference", "deep", "huge-batch"],
)
def test_hostile_recipes_are_one_line(tmp_path, test_stages, text, expected):
    with pytest.raises(RecipeError, match=expected) as info:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_anchor_bomb_in_tagger_with_is_refused(tmp_path, test_stages):
    # 528 bytes like the issue's: anchors defined on the first stage's `with`, the bomb used in tagger_with
    laughs = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    lol = "".join("      " + line + "\n" for line in laughs.splitlines())
    text = TAGGER_USER.replace("with: &tagger {cutoff: 100}", "with:\n" + lol.rstrip("\n")).replace(
        "tagger_with: {treshold: 0.5}", "tagger_with: {laughs: *i}")
    with pytest.raises(RecipeError, match="alias bomb"):
        load_recipe(write(tmp_path, text))


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16-le"])
def test_recipe_encoding_problems_are_one_line(tmp_path, test_stages, encoding):
    path = tmp_path / "r.yaml"
    path.write_bytes("recipe: 1\nname: café\nstages:\n  - use: brightness\n".encode(encoding))
    with pytest.raises(RecipeError, match=r"r\.yaml: not UTF-8 text.*save the file as UTF-8"):
        load_recipe(path)


def test_utf16_with_a_bom_is_accepted(tmp_path, test_stages):
    path = tmp_path / "r.yaml"
    path.write_bytes("recipe: 1\nname: café\nstages:\n  - use: brightness\n".encode("utf-16"))  # BOM + LE
    assert load_recipe(path).name == "café"
