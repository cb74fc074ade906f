"""One checkpoint's unit scores: AUROC / p / q, soft-WPMI, IoU where masks exist, sparse probes, as the rows of the
three tables of ``neurons.schema`` (units, sparse, summary)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from clipprobe.neurons.auroc import POOLINGS, bh_q, pool_maps, unit_auroc
from clipprobe.neurons.iou import MapReader, unit_iou
from clipprobe.neurons.schema import (
    DETECTOR_IOU,
    DETECTOR_Q,
    SPARSE_COLUMNS,
    SPARSE_KS,
    SUMMARY_COLUMNS,
    UNIT_COLUMNS,
)
from clipprobe.neurons.sparse import SparseResult, smallest_k, sparse_probes_of_modules
from clipprobe.neurons.wpmi import soft_wpmi
from clipprobe.probes.evaluation import ConceptTask

LABEL_SOURCES = ("clip", "truth")  # where soft-WPMI's p(concept | image) came from


@dataclass(frozen=True)
class UnitInputs:
    """What unit scoring reads besides the activations, the same for every checkpoint of a sweep.

    ``probabilities`` p(m | x) ``(images, vocabulary)`` over the rows of the activations (the sweep's images),
    from CLIP (``wpmi.clip_probabilities``) or the truth (``wpmi.truth_probabilities``); ``masks`` optional
    boolean ``(images, mask_concepts, H, W)`` over the same rows."""

    tasks: Sequence[ConceptTask]
    groups: Mapping[str, str]
    probabilities: np.ndarray | None = None
    vocabulary: Sequence[str] = ()
    label_source: str = "clip"
    masks: np.ndarray | None = None
    mask_concepts: Sequence[str] = ()
    pooling: str = "mean"
    ks: Sequence[int] = SPARSE_KS

    def __post_init__(self) -> None:
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"unknown label source {self.label_source!r}: expected one of {', '.join(LABEL_SOURCES)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.probabilities is not None and self.probabilities.shape[1] != len(self.vocabulary):
            raise ValueError(f"probabilities have {self.probabilities.shape[1]} columns: expected one per "
                             f"vocabulary concept ({len(self.vocabulary)})")
        if self.masks is not None and self.masks.shape[1] != len(self.mask_concepts):
            raise ValueError(f"masks have {self.masks.shape[1]} concepts: expected one per mask concept "
                             f"({len(self.mask_concepts)})")


@dataclass
class NeuronTables:
    """The rows of ``neurons/units.parquet``, ``neurons/sparse.parquet`` and ``neurons/summary.parquet``."""

    units: pd.DataFrame
    sparse: pd.DataFrame
    summary: pd.DataFrame

    @classmethod
    def concat(cls, parts: Sequence[NeuronTables]) -> NeuronTables:
        if not parts:
            return cls(pd.DataFrame(columns=list(UNIT_COLUMNS)), pd.DataFrame(columns=list(SPARSE_COLUMNS)),
                       pd.DataFrame(columns=list(SUMMARY_COLUMNS)))
        return cls(*(pd.concat([getattr(p, name) for p in parts], ignore_index=True)
                     for name in ("units", "sparse", "summary")))


def _module_units(epoch: int, module: str, path: str, pooled: np.ndarray, inputs: UnitInputs,
                  maps: np.ndarray | None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The units rows of one module (units x concepts) and per concept the summary's unit counts."""
    n_units = pooled.shape[1]
    concepts = [t.concept for t in inputs.tasks]
    au = np.empty((len(concepts), n_units))
    p = np.empty_like(au)
    q = np.empty_like(au)
    methods, n_pos, n_neg = [], [], []
    for c, task in enumerate(inputs.tasks):
        r = unit_auroc(pooled[np.asarray(task.rows)], task.labels)
        au[c], p[c], q[c] = r.auroc, r.p_value, bh_q(r.p_value)
        methods.append(r.p_method)
        n_pos.append(r.n_pos)
        n_neg.append(r.n_neg)
    auroc_label = np.asarray(concepts, dtype=object)[au.argmax(0)]
    wpmi = np.full((len(concepts), n_units), np.nan)
    wpmi_label = np.full(n_units, None, dtype=object)
    if inputs.probabilities is not None:
        score = soft_wpmi(pooled, inputs.probabilities)  # (units, vocabulary)
        vocab = list(inputs.vocabulary)
        wpmi_label = np.asarray(vocab, dtype=object)[score.argmax(1)]
        for c, concept in enumerate(concepts):
            if concept in vocab:
                wpmi[c] = score[:, vocab.index(concept)]
    iou = np.full((len(concepts), n_units), np.nan)
    iou_label = np.full(n_units, None, dtype=object)
    if inputs.masks is not None and maps is not None:
        scores = unit_iou(maps, inputs.masks)  # (units, mask concepts)
        mask_concepts = list(inputs.mask_concepts)
        iou_label = np.asarray(mask_concepts, dtype=object)[scores.argmax(1)]
        for c, concept in enumerate(concepts):
            if concept in mask_concepts:
                iou[c] = scores[:, mask_concepts.index(concept)]
    C = len(concepts)
    rows = C * n_units

    def same(value: Any) -> pd.Categorical:  # one value on every row, without a Python list of rows
        return pd.Categorical.from_codes(np.zeros(rows, np.int8), [value]) if value is not None else \
            pd.Categorical.from_codes(np.full(rows, -1, np.int8), ["none"])

    def coded(values: np.ndarray, codes: np.ndarray) -> pd.Categorical:
        names = sorted({v for v in values if v is not None})
        lookup = {v: i for i, v in enumerate(names)}
        per_unit = np.array([lookup.get(v, -1) for v in values], np.int32)
        return pd.Categorical.from_codes(per_unit[codes], names or ["none"])

    unit_of_row = np.tile(np.arange(n_units), C)
    concept_of_row = np.repeat(np.arange(C), n_units)
    table = pd.DataFrame({
        "epoch": np.full(rows, epoch, np.int32),
        "module": same(module), "module_path": same(path),
        "unit": unit_of_row.astype(np.int32),
        "concept": pd.Categorical.from_codes(concept_of_row, concepts),
        "group": coded(np.array([inputs.groups[c] for c in concepts], dtype=object), concept_of_row),
        "auroc": au.ravel(), "p_value": p.ravel(), "q_value": q.ravel(),
        "soft_wpmi": wpmi.ravel(), "iou": iou.ravel(),
        "auroc_label": coded(auroc_label, unit_of_row),
        "wpmi_label": coded(wpmi_label, unit_of_row),
        "iou_label": coded(iou_label, unit_of_row),
        "pooling": same(inputs.pooling),
        "p_method": pd.Categorical(np.concatenate(methods), categories=["asymptotic", "exact"]),
        "label_source": same(inputs.label_source if inputs.probabilities is not None else None),
        "n_pos": np.repeat(np.asarray(n_pos, np.int32), n_units),
        "n_neg": np.repeat(np.asarray(n_neg, np.int32), n_units),
    }, columns=list(UNIT_COLUMNS))
    counts = []
    for c, concept in enumerate(concepts):
        best = int(np.argmax(au[c]))
        counts.append({
            "concept": concept, "n_units": n_units,
            "n_detectors_auroc": int(((au[c] > 0.5) & (q[c] < DETECTOR_Q)).sum()),
            "n_detectors_iou": int((iou[c] > DETECTOR_IOU).sum()) if not np.isnan(iou[c]).all() else None,
            "best_unit": best, "best_auroc": float(au[c, best]),
        })
    return table, counts


def score_checkpoint(epoch: int, modules: Mapping[str, str], pooled: Callable[[str], np.ndarray],
                     inputs: UnitInputs, *, maps: Callable[[str], np.ndarray] | None = None,
                     probe_params: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                     full: Mapping[tuple[str, str], tuple[int, int]] | None = None) -> NeuronTables:
    """Score every unit of ``modules`` (display name -> module path) of one checkpoint against every concept.

    ``pooled(path)`` gives a module's mean-pooled activations ``(images, units)`` (``CheckpointActivations.gap``);
    ``maps(path)`` its maps ``(images, units, h, w)`` (an array or ``iou.MapReader``; None where the module has
    none, e.g. ``logits``), read only for max pooling and for IoU.
    Sparse probes always read the mean-pooled features, like the sweep's ``linear_gap`` probe; ``full`` (module,
    concept) -> (correct, n_test) of the sweep's own ``linear_gap`` fit spares refitting it (k = all)."""
    units, sparse, summary = [], [], []
    needs_maps = inputs.pooling == "max" or inputs.masks is not None
    counts: dict[str, list[dict[str, Any]]] = {}
    gaps = {}
    for module, path in modules.items():
        gap = gaps[module] = pooled(path)
        module_maps = maps(path) if (needs_maps and maps is not None) else None
        if inputs.pooling == "max" and module_maps is None and maps is None:
            raise ValueError(f"pooling 'max' needs the maps of {module}: pass maps (the activation cache's)")
        if inputs.pooling == "max" and module_maps is not None:
            flat = module_maps.flat if isinstance(module_maps, MapReader) else \
                np.asarray(module_maps).reshape(module_maps.shape[0], -1)
            values = pool_maps(flat, module_maps.shape[1], "max")
        else:  # mean pooling, or a module without spatial extent (logits: its pooled vector is itself)
            values = np.asarray(gap, np.float32)
        table, counts[module] = _module_units(epoch, module, path, values, inputs, module_maps)
        units.append(table)
    curves = sparse_probes_of_modules(gaps, inputs.tasks, ks=inputs.ks, params=probe_params, device=device,
                                      full=full)
    for module, results in curves.items():
        sparse.append(_sparse_frame(epoch, module, inputs.groups, results))
        for row in counts[module]:
            mine = [s for s in results if s.concept == row["concept"]]
            full = mine[-1]
            summary.append({"epoch": epoch, "module": module, "group": inputs.groups[row["concept"]], **row,
                            "full_test_acc": full.test_acc, "full_test_acc_ci_low": full.test_acc_ci_low,
                            "full_test_acc_ci_high": full.test_acc_ci_high, "smallest_k": smallest_k(mine)})
    return NeuronTables(pd.concat(units, ignore_index=True) if units else pd.DataFrame(columns=list(UNIT_COLUMNS)),
                        pd.concat(sparse, ignore_index=True) if sparse else pd.DataFrame(columns=list(SPARSE_COLUMNS)),
                        pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS)))


def _sparse_frame(epoch: int, module: str, groups: Mapping[str, str], results: Sequence[SparseResult]) -> pd.DataFrame:
    return pd.DataFrame([{
        "epoch": epoch, "module": module, "concept": s.concept, "group": groups[s.concept], "k": s.k,
        "units": json.dumps(list(s.units)), "test_acc": s.test_acc, "test_acc_ci_low": s.test_acc_ci_low,
        "test_acc_ci_high": s.test_acc_ci_high, "n_test": s.n_test,
    } for s in results], columns=list(SPARSE_COLUMNS))
