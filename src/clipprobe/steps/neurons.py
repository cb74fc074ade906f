"""The neurons step: unit scores (AUROC / p / q, soft-WPMI, IoU where masks exist, sparse probes) for every
checkpoint of an existing probe sweep, from its activation cache; tables and metrics logged on the sweep's runs.

``resolve`` picks the sweep (the newest finished one unless named) and everything it scored with, before anything
is logged; ``run`` scores the checkpoints not scored yet (a checkpoint run tagged ``clipprobe.neurons`` is done),
one at a time, and joins the parts into ``neurons/{units,sparse,summary}.parquet`` on the sweep run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from clipprobe.backbones.architectures import resolve_probe_modules
from clipprobe.concepts.splits import ConceptSplits
from clipprobe.neurons.cards import TOP_IMAGE_COLUMNS, top_activating
from clipprobe.neurons.config import NeuronsConfig
from clipprobe.neurons.iou import MapReader
from clipprobe.neurons.score import UnitInputs, score_checkpoint
from clipprobe.neurons.wpmi import clip_probabilities, truth_probabilities
from clipprobe.sweep.config import SweepConfig
from clipprobe.sweep.plan import CheckpointRef, Sweep, concept_tasks, select_checkpoints
from clipprobe.tracking import configs, units
from clipprobe.tracking.concept_tables import read_similarities
from clipprobe.tracking.results import find_latest_sweep, get_sweep, load_sweep_results
from clipprobe.world.masks import load_masks, mask_concepts

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class NeuronsInputs:
    """A resolved neurons run: its config (every choice made), the sweep's config, checkpoints and splits, and
    what unit scoring reads besides the activations."""

    config: NeuronsConfig
    sweep: SweepConfig
    refs: tuple[CheckpointRef, ...]
    splits: ConceptSplits
    inputs: UnitInputs
    full: Mapping[tuple[int, str, str], tuple[int, int]]  # (epoch, module, concept) -> the sweep's linear_gap

    def describe(self) -> str:
        c = self.config
        modules = ", ".join(c.modules) if c.modules else "those of the sweep"
        source = {None: "none (no CLIP similarities or truth found: soft-WPMI left empty)",
                  "clip": "CLIP (softmax over the concepts of 10 x cosine)",
                  "truth": "the true labels"}[self.inputs.label_source if self.inputs.probabilities is not None
                                               else None]
        return "\n".join([
            f"sweep: {c.sweep_run} ({self.sweep.model_name}; epochs {', '.join(map(str, c.epochs or ()))})",
            f"modules: {modules}; concepts: "
            f"{', '.join(t.concept for t in self.inputs.tasks)}",
            f"unit scores: AUROC ({c.pooling} pooling) + Mann-Whitney p + BH q; soft-WPMI from {source}; "
            f"IoU: {'masks' if self.inputs.masks is not None else 'no masks'}; sparse probes k = "
            f"{', '.join(map(str, c.ks))}, all",
        ])


def probabilities(splits: ConceptSplits, paths: list[str], concepts: list[str],
                  similarities: pd.DataFrame | None) -> tuple[np.ndarray | None, list[str], str]:
    """p(concept | image) over the sweep's images for soft-WPMI, its concepts (columns) and where it came from.

    CLIP's cosines when the concepts run kept them (``concepts/similarities.parquet``: softmax over the whole
    vocabulary of 10 x cosine, CLIP-Dissect's p(m | x)); else the truth over the sweep's concepts: the splits'
    ``truth`` column (a concept world) or, where the concept source is the annotations, their labels (an image
    outside a concept's split counts as not having it); else None (soft-WPMI left empty)."""
    if similarities is not None:
        table = similarities.set_index("path")
        vocabulary = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        if set(paths) <= set(table.index):
            return clip_probabilities(table.loc[paths, vocabulary].to_numpy(np.float64)), vocabulary, "clip"
        log.warning("the concepts run's similarities lack images of the sweep: soft-WPMI from the truth")
    column = "truth" if "truth" in splits.table.columns else ("label" if splits.metadata.get("source") ==
                                                              "annotations" else None)
    if column is None:
        return None, list(concepts), "clip"
    index = {p: i for i, p in enumerate(paths)}
    truth = np.zeros((len(paths), len(concepts)), np.int64)
    for c, concept in enumerate(concepts):
        rows = splits.select(concept)
        has = rows[pd.to_numeric(rows[column], errors="coerce").fillna(0).astype(int) == 1]["path"]
        truth[[index[p] for p in has if p in index], c] = 1
    return truth_probabilities(truth), list(concepts), "truth"


def masks_of(splits: ConceptSplits, paths: list[str]) -> tuple[np.ndarray | None, list[str]]:
    """The pool's pixel masks (``masks/<concept>/...``, the world's or a user's) of the sweep's images, as
    ``(images, concepts, H, W)`` bool, and their concepts; ``(None, [])`` when the pool has none."""
    concepts = mask_concepts(splits.pool_root)
    if not concepts:
        return None, []
    return load_masks(splits.pool_root, paths, concepts), concepts


def _full_probes(sweep_run: str) -> dict[tuple[int, str, str], tuple[int, int]]:
    """The sweep's own linear_gap fits: (epoch, module, concept) -> (correct, n_test), k = all of the curves."""
    try:
        table = load_sweep_results(sweep_run)
    except ValueError:
        return {}
    lin = table[table["probe"] == "linear_gap"]
    return {(int(r.epoch), str(r.module), str(r.concept)): (int(round(r.test_acc * r.n_test)), int(r.n_test))
            for r in lin.itertuples()}


def resolve(config: NeuronsConfig, *, device: str, experiment_name: str | None = None) -> NeuronsInputs:
    """``config`` with the sweep chosen and every setting checked against it, before anything is logged:
    ``LookupError`` (no sweep) or ``ValueError`` (a bad setting)."""
    from clipprobe.steps.probe import checkpoints, concept_splits

    sweep_run = config.sweep_run or find_latest_sweep(experiment_name).info.run_id
    get_sweep(sweep_run)
    try:
        sweep = configs.load_config(SweepConfig, sweep_run)
    except LookupError:
        raise ValueError(f"sweep {sweep_run} stores no {SweepConfig.artifact_path()} (an older clipprobe made it): "
                         "run `clipprobe probe` again") from None
    available = checkpoints(sweep.model_name or "", sweep.epochs, device=device)
    epochs = config.epochs if config.epochs is not None else tuple(r.epoch for r in available)
    unknown = sorted(set(epochs) - {r.epoch for r in available})
    if unknown:
        raise ValueError(f"epoch(s) {', '.join(map(str, unknown))} were not probed by sweep {sweep_run}: it has "
                         f"epochs {', '.join(str(r.epoch) for r in available)}")
    refs = select_checkpoints(available, list(epochs))
    splits = concept_splits(sweep.splits_run or "")
    sweep_concepts = list(sweep.concepts or splits.concepts)
    concepts = list(config.concepts or sweep_concepts)
    extra = [c for c in concepts if c not in sweep_concepts]
    if extra:
        raise ValueError(f"concept(s) {', '.join(extra)} not in sweep {sweep_run}: it probed {', '.join(sweep_concepts)}")
    if config.modules is not None:  # any module of the backbone (logits too); unknown names raise naming the model's
        resolve_probe_modules(refs[0].load().module, list(config.modules))
    paths, tasks, groups = concept_tasks(splits, sweep.concepts)  # the rows of the sweep's cached activations
    tasks = [t for t in tasks if t.concept in concepts]
    try:
        similarities, _meta = read_similarities(sweep.splits_run or "")
    except LookupError as err:
        log.info("soft-WPMI without CLIP: %s", err)
        similarities = None
    P, vocabulary, source = probabilities(splits, paths, sweep_concepts, similarities)
    masks, masked = masks_of(splits, paths)
    unit_inputs = UnitInputs(tasks, groups, P, vocabulary, source, masks=masks, mask_concepts=masked,
                             pooling=config.pooling, ks=config.ks)
    config = NeuronsConfig(sweep_run=sweep_run, epochs=tuple(r.epoch for r in refs), modules=config.modules,
                           concepts=tuple(concepts), pooling=config.pooling, ks=config.ks)
    return NeuronsInputs(config, sweep, tuple(refs), splits, unit_inputs, _full_probes(sweep_run))


@dataclass(frozen=True)
class NeuronsOutcome:
    sweep_run: str
    scored: tuple[int, ...]  # epochs scored by this call
    skipped: tuple[int, ...]  # epochs already scored before
    rows: Mapping[str, int]  # rows per joined table
    seconds: float


def run(inputs: NeuronsInputs, *, device: str, cache_dir: str | Path | None = None,
        batch_size: int | None = None, progress: bool = True, say: Callable[[str], None] = print) -> NeuronsOutcome:
    """Score every checkpoint of ``inputs`` not scored yet, logging each as it is done, then join the tables."""
    from clipprobe.core.devices import resolve_device

    config, sweep = inputs.config, inputs.sweep
    sweep_run = config.sweep_run or ""
    done = units.scored_modules(sweep_run)
    dev = str(resolve_device(device))
    extract = sweep.extract_options(batch_size) if batch_size else sweep.extract_options()
    runner = Sweep(inputs.splits, sweep.plan(), cache_dir=cache_dir, extract=extract, device=dev, progress=False)
    named = config.modules if config.modules is not None else sweep.modules  # None: every module of the backbone
    todo = [r for r in inputs.refs if named is None or not set(named) <= done.get(r.epoch, set())]
    if len(todo) < len(inputs.refs):
        say(f"{len(inputs.refs) - len(todo)} of {len(inputs.refs)} checkpoints already scored under {sweep_run}: "
            "scoring only the rest")
    units.log_config(sweep_run, config)
    units.note_entry_run(sweep_run)
    metadata = {"sweep_run_id": sweep_run, "config": config.to_dict(), "model_name": sweep.model_name,
                "splits_run": sweep.splits_run, "pool_root": str(inputs.splits.pool_root)}
    paths = runner.paths  # the rows of the cached activations (relative to pool_root)
    start = time.perf_counter()
    scored = []
    for ref in tqdm(todo, desc="unit scores", unit="checkpoint", disable=not progress):
        backbone = ref.backbone()
        modules = resolve_probe_modules(backbone.module, list(named) if named is not None else
                                        backbone.probe_modules or None)
        modules = {m: p for m, p in modules.items() if m not in done.get(ref.epoch, set())}
        if not modules:
            continue
        scored.append(ref.epoch)
        want_maps = config.pooling == "max" or inputs.inputs.masks is not None
        # the sweep's cache; a forward pass only if it was deleted, or for maps the sweep did not keep
        acts = runner.cache.get(backbone.module, dict(modules), runner.images(backbone.transform),
                                fingerprint=backbone.fingerprint, options=runner.extract, device=runner.device,
                                progress=False, native_bf16=runner.native_bf16,
                                maps=want_maps or runner.plan.needs_maps)
        del backbone
        full = {(m, c): v for (e, m, c), v in inputs.full.items() if e == ref.epoch}

        def maps(path: str, acts: Any = acts) -> MapReader | None:
            try:
                return MapReader(acts.map(path), acts.map_shape(path))
            except (KeyError, ValueError):  # logits: no maps
                return None

        tables = score_checkpoint(ref.epoch, modules, acts.gap, inputs.inputs, maps=maps if want_maps else None,
                                  full=full or None,
                                  device=dev, probe_params=sweep.plan().params_of("linear_gap")
                                  if "linear_gap" in sweep.probes else None)
        top = [top_activating(acts.gap(path), paths, units=sorted(set(best)), epoch=ref.epoch, module=module)
               for module, path in modules.items()
               if len(best := tables.summary.loc[tables.summary["module"] == module, "best_unit"].astype(int))]
        runner.cache.release(acts)
        units.log_checkpoint(sweep_run, ref.epoch, {"units": tables.units, "sparse": tables.sparse,
                                                    "summary": tables.summary,
                                                    "top_images": pd.concat(top, ignore_index=True) if top else
                                                    pd.DataFrame(columns=list(TOP_IMAGE_COLUMNS))}, metadata)
    rows = units.log_tables(sweep_run, metadata)
    return NeuronsOutcome(sweep_run, tuple(scored), tuple(sorted(e for e in done if e not in scored)), rows,
                          time.perf_counter() - start)


def score_sweep(sweep_run: str, *, device: str, cache_dir: str | Path | None = None, batch_size: int | None = None,
                say: Callable[[str], None] = print) -> None:
    """``probe --neurons``: this step on the sweep just made, with its defaults and the sweep's activation cache."""
    inputs = resolve(NeuronsConfig(sweep_run=sweep_run), device=device)
    say(inputs.describe())
    scored = run(inputs, cache_dir=cache_dir, device=device, batch_size=batch_size, say=say)
    say(f"unit scores: {len(scored.scored)} checkpoints in {scored.seconds:.1f} s; "
        f"{scored.rows.get('units', 0):,} unit rows in neurons/units.parquet")
