"""Concept vocabularies: named groups of concepts read from a small TOML file, and the prompt template."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEFAULT_PROMPT = "This image has a concept: {concept}"
BUILTIN_VOCABULARIES = ("seed", "world")


@dataclass(frozen=True)
class ConceptGroup:
    """Concepts compared with each other: CLIP's similarities are softmax-normalised within a group."""

    name: str
    concepts: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """Ordered concept groups; every concept appears once across all groups."""

    groups: tuple[ConceptGroup, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for group in self.groups:
            if len(group.concepts) < 2:
                raise ValueError(
                    f"{self.source}: group {group.name!r} has {len(group.concepts)} concept(s) "
                    "but needs at least two (a softmax over one concept is always 1): add concepts"
                )
            for concept in group.concepts:
                if not concept or not concept.strip():
                    raise ValueError(f"{self.source}: group {group.name!r} has an empty concept name")
                if concept in seen:
                    raise ValueError(
                        f"{self.source}: concept {concept!r} appears twice (groups {seen[concept]!r} "
                        f"and {group.name!r}): each concept must be listed once"
                    )
                seen[concept] = group.name

    @property
    def concepts(self) -> list[str]:
        return [c for g in self.groups for c in g.concepts]

    def group_of(self, concept: str) -> str:
        for group in self.groups:
            if concept in group.concepts:
                return group.name
        raise KeyError(f"unknown concept {concept!r}: the vocabulary has {', '.join(self.concepts)}")

    def to_dict(self) -> dict[str, list[str]]:
        return {g.name: list(g.concepts) for g in self.groups}

    def fingerprint(self) -> str:
        """A short sha256 of the groups and their order (the source file's name plays no part)."""
        text = json.dumps(self.to_dict(), sort_keys=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, groups: dict[str, list[str]], source: str = "<memory>") -> Vocabulary:
        return cls(tuple(ConceptGroup(name, tuple(cs)) for name, cs in groups.items()), source)


def load_vocabulary(name_or_path: str | Path) -> Vocabulary:
    """A built-in vocabulary (``seed``, ``world``) or a TOML file with a ``[groups]`` table of lists."""
    text, source = _read(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{source}: not valid TOML ({err}): fix the file") from err
    groups = data.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise ValueError(
            f"{source}: expected a [groups] table such as `colours = [\"red\", \"blue\"]`: add one"
        )
    for name, concepts in groups.items():
        if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
            raise ValueError(f"{source}: group {name!r} must be a list of strings, got {concepts!r}")
    return Vocabulary.from_dict(groups, source=source)


def _read(name_or_path: str | Path) -> tuple[str, str]:
    text = str(name_or_path)
    if text in BUILTIN_VOCABULARIES:
        file = resources.files("clipprobe.concepts") / "vocabularies" / f"{text}.toml"
        return file.read_text(encoding="utf-8"), f"{text}.toml"
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"vocabulary file not found: {path} (give a TOML file or one of "
            f"{', '.join(BUILTIN_VOCABULARIES)})"
        )
    return path.read_text(encoding="utf-8"), str(path)


def check_prompt(prompt: str) -> str:
    """The prompt template must hold ``{concept}`` exactly where the concept name goes."""
    if "{concept}" not in prompt:
        raise ValueError(f"prompt {prompt!r} has no {{concept}} placeholder: e.g. {DEFAULT_PROMPT!r}")
    try:
        prompt.format(concept="x")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"prompt {prompt!r} is not a valid template ({err}): use only {{concept}}") from err
    return prompt
