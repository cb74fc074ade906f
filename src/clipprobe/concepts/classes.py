"""Each pool image's class, for the class-based control task and class-matched negatives: from
ImageNet's devkit ground truth (LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt)
or from class subfolders (torchvision's ImageFolder layout)."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

log = logging.getLogger(__name__)

FOLDERS = "folders"  # --class-labels folders: the class of an image is its subfolder
LOC_SOLUTION_HEADER = ("ImageId", "PredictionString")
# Line i (1-based) of the devkit's ground truth is the ILSVRC2012_ID of ILSVRC2012_val_<i:08d>.JPEG.
_VAL_STEM = re.compile(r"^ILSVRC2012_val_(\d{8})$")


@dataclass(frozen=True)
class ImageClasses:
    """The class of each pool image (index: the path relative to the pool), and what it came from."""

    classes: pd.Series
    source: str  # the labels file, or "folders"
    kind: str  # "wnid", "ILSVRC2012_ID" or "folder": what a class value is

    @property
    def n_known(self) -> int:
        return int(self.classes.notna().sum())


def read_image_classes(labels: str | Path, paths: Sequence[str]) -> ImageClasses:
    """The class of each of ``paths`` (relative to the pool) from ``labels``: a devkit file or
    ``"folders"``. Images the labels do not cover get no class (and a warning with the count).

    - ``LOC_val_solution.csv`` (Kaggle's ImageNet localisation files): ``ImageId,PredictionString``,
      the class is the first WordNet id of the prediction string (``n01751748 ...``);
    - ``ILSVRC2012_validation_ground_truth.txt`` (the devkit): one ILSVRC2012_ID per line, line i
      for ``ILSVRC2012_val_<i:08d>.JPEG``; a ``meta.mat`` next to it turns the ids into WordNet ids;
    - ``folders``: every image sits in a class subfolder (``n01440764/ILSVRC2012_val_00000293.JPEG``).
    """
    if str(labels) == FOLDERS:
        return _from_folders(paths)
    path = Path(labels)
    if not path.is_file():
        raise FileNotFoundError(
            f"class labels file not found: {path} (give LOC_val_solution.csv, "
            f"ILSVRC2012_validation_ground_truth.txt, or '{FOLDERS}' for class subfolders)"
        )
    with open(path, newline="") as f:
        first = f.readline().strip()
    if first.replace(" ", "").startswith(",".join(LOC_SOLUTION_HEADER)):
        by_stem, kind = _loc_solution(path), "wnid"
    elif first.isdigit():
        by_stem, kind = _ground_truth(path)
    else:
        raise ValueError(
            f"{path}: not a class labels file: expected LOC_val_solution.csv (header "
            f"{','.join(LOC_SOLUTION_HEADER)}) or ILSVRC2012_validation_ground_truth.txt (one class id a line)"
        )
    stems = [PurePosixPath(p).stem for p in paths]
    classes = pd.Series([by_stem.get(s) for s in stems], index=pd.Index(list(paths), name="path"),
                        name="image_class", dtype=object)
    out = ImageClasses(classes, str(path), kind)
    if out.n_known == 0:
        raise ValueError(
            f"{path}: names none of the pool's {len(paths)} images (e.g. {stems[0]}): point --pool at "
            "the validation images these labels describe"
        )
    if out.n_known < len(paths):
        log.warning("%s: no class for %d of %d pool images (e.g. %s)", path, len(paths) - out.n_known,
                    len(paths), paths[int(classes.isna().to_numpy().argmax())])
    return out


def _loc_solution(path: Path) -> dict[str, str]:
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            tokens = (row.get("PredictionString") or "").split()
            if row.get("ImageId") and tokens:
                out[row["ImageId"].strip()] = tokens[0]
    return out


def _ground_truth(path: Path) -> tuple[dict[str, str], str]:
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = next((i for i in ids if not i.isdigit()), None)
    if bad is not None:
        raise ValueError(f"{path}: line {bad!r} is not a class id: expected one ILSVRC2012_ID a line")
    names = _wnids_from_meta(path.parent / "meta.mat")
    kind = "wnid" if names else "ILSVRC2012_ID"
    return {f"ILSVRC2012_val_{i:08d}": names.get(v, v) if names else v for i, v in enumerate(ids, start=1)}, kind


def _wnids_from_meta(meta: Path) -> dict[str, str]:
    """ILSVRC2012_ID -> WordNet id from the devkit's meta.mat, or {} when there is none."""
    if not meta.is_file():
        return {}
    from scipy.io import loadmat

    synsets = loadmat(meta, squeeze_me=True)["synsets"]
    return {str(int(s["ILSVRC2012_ID"])): str(s["WNID"]) for s in synsets}


def _from_folders(paths: Sequence[str]) -> ImageClasses:
    parts = [PurePosixPath(p).parts for p in paths]
    flat = [p for p, q in zip(paths, parts, strict=True) if len(q) < 2]
    if flat:
        raise ValueError(
            f"--class-labels {FOLDERS}: {len(flat)} image(s) lie directly in the pool, not in a class "
            f"subfolder (e.g. {flat[0]}): give a labels file, or sort them into class folders"
        )
    classes = pd.Series([q[0] for q in parts], index=pd.Index(list(paths), name="path"), name="image_class",
                        dtype=object)
    if classes.nunique() < 2:
        raise ValueError(
            f"--class-labels {FOLDERS}: every image lies under {classes.iloc[0]!r}: point --pool at the "
            "folder that holds the class subfolders"
        )
    return ImageClasses(classes, FOLDERS, "folder")
