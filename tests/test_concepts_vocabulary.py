"""Vocabulary files: built-ins, and each malformed file refused with one line naming the fix."""

from __future__ import annotations

import pytest

from clipprobe.concepts.vocabulary import DEFAULT_PROMPT, check_prompt, load_vocabulary


def test_seed_vocabulary_is_the_seeds_groups():
    vocab = load_vocabulary("seed")
    assert vocab.to_dict() == {
        "colours": ["red", "blue", "green", "yellow"],
        "patterns": ["dotted", "striped", "zigzagged"],
        "gender": ["female", "male"],
    }
    assert vocab.group_of("male") == "gender"
    assert DEFAULT_PROMPT.format(concept="red") == "This image has a concept: red"


def test_world_vocabulary_has_no_gender():
    vocab = load_vocabulary("world")
    assert [g.name for g in vocab.groups] == ["colours", "patterns", "shapes"]
    assert "female" not in vocab.concepts


def test_duplicate_concept_is_refused(tmp_path):
    path = tmp_path / "dup.toml"
    path.write_text('[groups]\ncolours = ["red", "blue"]\nmore = ["green", "red"]\n')
    with pytest.raises(ValueError, match=r"dup.toml: concept 'red' appears twice \(groups 'colours' and 'more'\)"):
        load_vocabulary(path)


def test_group_of_one_concept_is_refused(tmp_path):
    path = tmp_path / "one.toml"
    path.write_text('[groups]\ncolours = ["red", "blue"]\ngender = ["female"]\n')
    with pytest.raises(ValueError, match="group 'gender' has 1 concept.* at least two"):
        load_vocabulary(path)


def test_missing_file_and_bad_prompt(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        load_vocabulary(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="no \\{concept\\} placeholder"):
        check_prompt("a photo")
    assert check_prompt("a {concept} thing") == "a {concept} thing"
