"""Bounded YAML reading: bombs, cycles, depth, duplicate keys and encodings are one-line problems."""

import codecs

import pytest
import yaml

from recognize import safe_yaml
from recognize.safe_yaml import YamlProblem

#: 9 levels of 9 aliases: ~9^5 values once expanded, a few hundred bytes of text
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


def test_alias_bomb_is_measured_not_expanded():
    assert len(BOMB) < 600
    with pytest.raises(YamlProblem, match="alias bomb") as info:
        safe_yaml.load(BOMB)
    assert info.value.line is not None


def test_aliases_within_the_limit_load_like_safe_load():
    text = "base: &b {threshold: 0.5, device: cpu}\nx: *b\ny: [*b, *b]\n"
    assert safe_yaml.load(text) == yaml.safe_load(text)


@pytest.mark.parametrize("text", ["x: &a [1, *a]\n", "x: &a {y: [1, {z: *a}]}\n"])
def test_self_reference_is_refused(text):
    with pytest.raises(YamlProblem, match="self-referencing"):
        safe_yaml.load(text)


@pytest.mark.parametrize("depth", [safe_yaml.MAX_DEPTH + 5, 5000])
def test_deep_nesting_is_refused_without_recursion_error(depth):
    with pytest.raises(YamlProblem, match="nested too deeply"):
        safe_yaml.load("x: " + "[" * depth + "]" * depth)


def test_duplicate_keys_name_both_lines():
    with pytest.raises(YamlProblem, match=r"key 'a' is given twice \(lines 1 and 3\)") as info:
        safe_yaml.load("a: 1\nb: 2\na: 3\n")
    assert info.value.line == 3
    assert safe_yaml.load("a: 1\nb: {a: 2}\n") == {"a": 1, "b": {"a": 2}}  # other mappings are other scopes


def test_merge_keys_still_work():
    assert safe_yaml.load("base: &b {x: 1}\nmine:\n  <<: *b\n  y: 2\n")["mine"] == {"x": 1, "y": 2}


@pytest.mark.parametrize(
    "bom,encoding", [(codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]
)
def test_byte_order_marks_are_honoured(bom, encoding):
    assert safe_yaml.load(safe_yaml.decode(bom + "name: café\n".encode(encoding))) == {"name": "café"}


def test_other_encodings_are_one_line():
    with pytest.raises(YamlProblem, match=r"not UTF-8 text: byte 9 \(line 1\) is 0xe9; save the file as UTF-8"):
        safe_yaml.decode("name: café\n".encode("latin-1"))
    with pytest.raises(YamlProblem, match="looks like UTF-16 without a byte-order mark"):
        safe_yaml.decode("name: café\n".encode("utf-16-le"))
    with pytest.raises(YamlProblem, match="UTF-16-LE byte-order mark but byte"):
        safe_yaml.decode(codecs.BOM_UTF16_LE + b"\x00\xd8")  # a lone surrogate


def test_large_files_are_not_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (safe_yaml.MAX_BYTES + 1))
    with pytest.raises(YamlProblem, match="larger than"):
        safe_yaml.read_file(path)


def test_unprintable_characters_are_one_line():
    with pytest.raises(YamlProblem, match="special characters are not allowed"):
        safe_yaml.load("a: \x00\n")
