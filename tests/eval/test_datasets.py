"""Readers of the official benchmark files, on the official files themselves and on small edge cases."""

import numpy as np
import pytest

from recognize.errors import InputError
from recognize.eval.datasets import find_image, read_annotations, read_taglist, vocabulary_columns


@pytest.fixture
def datasets(reference):
    return reference / "data" / "datasets"


def test_openimages_names_and_tag2text_ids_describe_the_same_truth(datasets):
    root = datasets / "openimages_common_214"
    names = read_taglist(root / "openimages_common_214_ram_taglist.txt")
    ids = read_taglist(root / "openimages_common_214_tag2text_tagidlist.txt")
    assert len(names) == 214 and names.ids is None
    assert len(ids) == 214 and ids.ids[:3] == [3, 8, 16]
    by_name = read_annotations(root / "openimages_common_214_ram_annots.txt", names)
    by_id = read_annotations(root / "openimages_common_214_tag2text_idannots.txt", ids)
    assert (by_name.format, by_id.format) == ("names", "ids")
    assert by_name.images == by_id.images and len(by_name.images) == 57224
    assert by_name.images[3] == "test/00045d609ca3f4eb"
    row = by_name.targets[3]
    assert {names.names[k] for k in np.flatnonzero(row)} == {"pumpkin", "halloween"}
    assert {ids.ids[k] for k in np.flatnonzero(by_id.targets[3])} == {2035, 612}
    assert (by_name.targets.sum(axis=1) == 0).sum() == 157  # images without any label are kept
    # the two files differ only in the order of their columns
    columns = {col.tobytes() for col in by_id.targets.T}
    assert all(col.tobytes() in columns for col in by_name.targets.T)


@pytest.mark.parametrize(("name", "classes", "images", "first_labels"), [
    ("hico/hico_600", 600, 9658, {245}),
    ("imagenet_multi/imagenet_multi_1000", 1000, 50000, set()),
])
def test_position_annotations(datasets, name, classes, images, first_labels):
    taglist = read_taglist(datasets / f"{name}_taglist.txt")
    truth = read_annotations(datasets / f"{name}_annots.txt", taglist)
    assert truth.format == "positions"
    assert truth.targets.shape == (images, classes)
    assert set(np.flatnonzero(truth.targets[0])) == first_labels
    if classes == 1000:
        assert truth.images[1] == "ILSVRC2012_val_00000002.JPEG"
        assert [taglist.names[k] for k in np.flatnonzero(truth.targets[1])] == ["ski", "mountain"]


def test_rare_classes_map_only_open_set(reference, datasets):
    root = datasets / "openimages_rare_200"
    taglist = read_taglist(root / "openimages_rare_200_ram_taglist.txt")
    ram_names = (reference / "data" / "ram" / "data" / "ram_tag_list.txt").read_text().splitlines()
    with pytest.raises(InputError, match=r"200 of 200 classes .* not in the tagger's vocabulary.*--open-set"):
        vocabulary_columns(taglist, ram_names)
    assert vocabulary_columns(taglist, taglist.names).tolist() == list(range(200))
    common = read_taglist(datasets / "openimages_common_214" / "openimages_common_214_ram_taglist.txt")
    columns = vocabulary_columns(common, ram_names)
    assert [ram_names[c] for c in columns] == common.names


def test_tag2text_ids_index_the_vocabulary(reference, datasets):
    ids = read_taglist(datasets / "openimages_common_214" / "openimages_common_214_tag2text_tagidlist.txt")
    vocabulary = (reference / "data" / "ram" / "data" / "tag2text_ori_tag_list.txt").read_text().splitlines()
    assert vocabulary_columns(ids, vocabulary).tolist() == ids.ids
    with pytest.raises(InputError, match="outside the model's 100-tag vocabulary"):
        vocabulary_columns(ids, vocabulary[:100])


def test_repeated_names(tmp_path):
    taglist = tmp_path / "tags.txt"
    taglist.write_text("crane\nswan\ncrane\n")
    annots = tmp_path / "annots.txt"
    annots.write_text("a.jpg,crane\nb.jpg,swan\n")
    tags = read_taglist(taglist)
    truth = read_annotations(annots, tags)
    assert truth.targets.tolist() == [[True, False, True], [False, True, False]]  # as the official get_mAP
    # a vocabulary equal to the taglist keeps the repeats apart; another maps to the first occurrence
    assert vocabulary_columns(tags, ["crane", "swan", "crane"]).tolist() == [0, 1, 2]
    assert vocabulary_columns(tags, ["swan", "crane", "owl", "crane"]).tolist() == [1, 0, 1]


def test_names_with_spaces_and_unlabelled_images(tmp_path):
    (tmp_path / "t.txt").write_text("art gallery\ncar\n")
    (tmp_path / "a.txt").write_text("x,art gallery,car\ny\nz,\n\n")
    truth = read_annotations(tmp_path / "a.txt", read_taglist(tmp_path / "t.txt"))
    assert truth.images == ["x", "y", "z"] and truth.targets.tolist() == [[True, True], [False, False],
                                                                           [False, False]]


@pytest.mark.parametrize(("taglist", "annots", "message"), [
    ("a\nb\n", "x.jpg,a,c\n", r"a\.txt:1: tag 'c' is not in the taglist"),
    ("a\nb\n", "x.jpg,0\ny.jpg,1 2\n", r"a\.txt:2: class position 2 is outside the 2-class taglist"),
    ("5\n7\n", "x.jpg,5\ny.jpg,7,6\n", r"a\.txt:2: tag id '6' is not in the taglist"),
    ("a\n\nb\n", "x.jpg,a\n", r"t\.txt:2: empty line"),
    ("\n", "x.jpg,a\n", "the taglist is empty"),
    ("a\n", "\n\n", "no annotation lines"),
    ("a\n", ",a\n", "the line has no image name"),
])
def test_bad_files_name_the_line(tmp_path, taglist, annots, message):
    (tmp_path / "t.txt").write_text(taglist)
    (tmp_path / "a.txt").write_text(annots)
    with pytest.raises(InputError, match=message):
        read_annotations(tmp_path / "a.txt", read_taglist(tmp_path / "t.txt"))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(InputError, match="no such taglist file"):
        read_taglist(tmp_path / "absent.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not a UTF-8 text taglist"):
        read_taglist(tmp_path / "latin.txt")


def test_find_image(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "0001.jpg").write_bytes(b"x")
    (tmp_path / "b.JPEG").write_bytes(b"x")
    (tmp_path / "c.png").write_bytes(b"x")
    assert find_image(tmp_path, "test/0001") == tmp_path / "test" / "0001.jpg"  # official: name + ".jpg"
    assert find_image(tmp_path, "b.JPEG") == tmp_path / "b.JPEG"
    assert find_image(tmp_path, "c") == tmp_path / "c.png"
    assert find_image(tmp_path, "test/0002") is None
