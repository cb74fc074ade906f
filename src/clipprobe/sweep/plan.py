"""The probe sweep: checkpoint x module x concept x probe kind, one hooked pass per checkpoint.

No MLflow here: the caller passes ``on_fit`` / ``on_checkpoint`` callbacks (the CLI logs nested runs
with them) and the identities of fits already done (resume).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clipprobe.activations.cache import ActivationCache, CheckpointActivations
from clipprobe.activations.decoding import ImageSet, load_images
from clipprobe.activations.options import ExtractOptions
from clipprobe.backbones.architectures import resolve_probe_modules
from clipprobe.backbones.loader import Backbone
from clipprobe.backbones.names import LOGITS
from clipprobe.concepts.splits import ConceptSplits, image_ids
from clipprobe.probes.evaluation import DEFAULT_PERMUTATIONS, ConceptTask, evaluate_concepts
from clipprobe.probes.kinds import SEED_PROBE_KINDS, probe_kind

log = logging.getLogger(__name__)

DEFAULT_PROBES = SEED_PROBE_KINDS
DEFAULT_REPEATS = 3
FitKey = tuple[str, str, str, int]  # (concept, module, probe, epoch)


class DuplicateWeightsError(ValueError):
    """Two checkpoints given as different epochs hold the same weights."""


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint to probe: known epoch and fingerprint up front, weights loaded only when needed."""

    epoch: int
    fingerprint: str
    load: Callable[[], Backbone] = field(compare=False, repr=False)
    name: str | None = None
    version: str | None = None

    def backbone(self) -> Backbone:
        """The checkpoint's backbone; refuses weights whose fingerprint is not the one the registry recorded."""
        backbone = self.load()
        if backbone.fingerprint != self.fingerprint:
            raise ValueError(f"epoch {self.epoch}: loaded weights have fingerprint {backbone.fingerprint[:12]}..., "
                             f"the registry says {self.fingerprint[:12]}...: re-import the checkpoint")
        return backbone


@dataclass(frozen=True)
class SweepPlan:
    """What to fit: modules (display names or paths; None = all), concepts (None = all), probe kinds,
    re-splits, seed and per-kind hyper-parameter overrides with where they came from."""

    modules: Sequence[str] | None = None
    concepts: Sequence[str] | None = None
    probes: Sequence[str] = DEFAULT_PROBES
    repeats: int = DEFAULT_REPEATS
    permutations: int = DEFAULT_PERMUTATIONS
    seed: int = 0
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hparams_source: Mapping[str, str] = field(default_factory=dict)
    fast_gram: bool = True  # False: float32 Gram-form products (probes.design.gram_product_dtype)
    mdl: bool = True  # the online codelength and compression of every fit: on, it adds at most 15% to a sweep of
    # these defaults (benchmarks/results/code_timings.md)

    def __post_init__(self) -> None:
        for p in self.probes:
            probe_kind(p)  # unknown names raise listing the known ones
        unknown = sorted(set(self.hparams) - set(self.probes))
        if unknown:
            raise ValueError(f"hyper-parameters given for probe kinds {unknown} that the sweep does not fit "
                             f"({', '.join(self.probes)}): drop them or add the kinds to --probes")
        if self.permutations < 0:
            raise ValueError(f"permutations={self.permutations} is negative: expected 0 (no permutation baseline) "
                             f"or more ({DEFAULT_PERMUTATIONS} lets its p-value reach 0.05)")
        if self.repeats < 0:
            raise ValueError(f"repeats={self.repeats} is negative: expected 0 (stored split only) or more")
        on_maps = [p for p in self.probes if probe_kind(p).features == "map"]
        if self.modules is not None and LOGITS in self.modules and on_maps:
            raise ValueError(f"module {LOGITS} (the model's output, one value per class) has no maps for probe kind(s) "
                             f"{', '.join(on_maps)}: pass --probes with gap kinds only (linear_gap, non_linear_gap), "
                             f"or probe {LOGITS} in a sweep of its own")

    @property
    def needs_maps(self) -> bool:
        """Whether a probe kind of the plan reads full activation maps (else only pooled vectors are cached)."""
        return any(probe_kind(p).features == "map" for p in self.probes)

    def params_of(self, probe: str) -> dict[str, Any]:
        """Every hyper-parameter of a probe kind, validated, seeded by the sweep's seed unless given."""
        kind = probe_kind(probe)
        given = dict(self.hparams.get(probe, {}))
        if "seed" in kind.hparams and "seed" not in given:
            given["seed"] = self.seed
        return kind.params(given)

    def source_of(self, probe: str) -> str:
        return self.hparams_source.get(probe, "given" if probe in self.hparams else "defaults")


def check_distinct_weights(checkpoints: Sequence[CheckpointRef], *, allow_duplicate_weights: bool = False) -> None:
    """Refuse checkpoints with equal fingerprints as different epochs (the seed's flat "when" axis)."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for c in checkpoints:
        by_digest[c.fingerprint].append(c.epoch)
    for digest, epochs in by_digest.items():
        if len(epochs) > 1:
            msg = (f"epochs {', '.join(map(str, sorted(epochs)))} have the same weights (fingerprint "
                   f"{digest[:12]}...): they are not different points in training")
            if not allow_duplicate_weights:
                raise DuplicateWeightsError(msg + "; probe one of them (--epochs) or pass --allow-duplicate-weights")
            log.warning("%s; probing them anyway (--allow-duplicate-weights)", msg)


IMAGE_CLASS_COLUMN = "image_class"  # optional splits column: the class of each image, for the control task


def concept_tasks(splits: ConceptSplits, concepts: Sequence[str] | None = None) -> tuple[list[str], list[ConceptTask], dict[str, str]]:
    """The union of the concepts' images (sorted paths), one task per concept on rows of that union,
    and each concept's group.

    Each task carries its images' ids (``concepts.splits.image_ids``: content digests, or paths in older splits)
    to match test sets across sweeps and, when the splits have
    an ``image_class`` column with a value for every row of the concept, the image classes for the
    control task; otherwise ``classes`` is None and the control task is skipped (NaN selectivity)."""
    known = splits.concepts
    chosen = list(known) if concepts is None else list(concepts)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise ValueError(f"unknown concept(s) {', '.join(unknown)}: the splits hold {', '.join(known)}")
    table = splits.table[splits.table["concept"].isin(chosen)]
    paths = sorted(table["path"].unique())
    index = {p: i for i, p in enumerate(paths)}
    tasks, groups = [], {}
    for concept in chosen:
        rows = splits.select(concept)
        classes = None
        if IMAGE_CLASS_COLUMN in rows.columns and rows[IMAGE_CLASS_COLUMN].notna().all():
            classes = rows[IMAGE_CLASS_COLUMN].astype(str).to_numpy()
        tasks.append(ConceptTask(concept, np.array([index[p] for p in rows["path"]]),
                                 rows["label"].to_numpy().astype(np.int64), (rows["part"] == "train").to_numpy(),
                                 classes=classes, images=image_ids(rows)))
        groups[concept] = str(rows["group"].iloc[0])
    return paths, tasks, groups


class Sweep:
    """Runs a plan over checkpoints; images are decoded once per transform for the whole sweep."""

    def __init__(self, splits: ConceptSplits, plan: SweepPlan, *, cache_dir: str | Path | None = None,
                 extract: ExtractOptions | None = None, device: str | torch.device = "cpu",
                 keep_cache: bool = True, progress: bool = True, native_bf16: bool | None = None) -> None:
        self.splits, self.plan = splits, plan
        self.native_bf16 = native_bf16  # None: ask the device (only ``auto`` precision reads it)
        self.cache = ActivationCache(cache_dir)
        self.extract, self.device, self.progress = extract or ExtractOptions(), device, progress
        self.keep_cache = keep_cache  # False: a checkpoint's activations are deleted once it is probed
        self.paths, self.tasks, self.groups = concept_tasks(splits, plan.concepts)
        self._images: dict[str, ImageSet] = {}

    def images(self, transform: Any) -> ImageSet:
        key = repr(transform)
        if key not in self._images:
            self._images[key] = load_images(self.splits.pool_root, self.paths, transform,
                                            cache_dir=self.cache.root, progress=self.progress)
        return self._images[key]

    def modules_of(self, backbone: Backbone) -> dict[str, str]:
        """The plan's modules of ``backbone`` (display name -> path; all of its probe modules when the plan
        names none); an unknown one raises naming those the model has."""
        return resolve_probe_modules(backbone.module, self.plan.modules if self.plan.modules is not None
                                     else backbone.probe_modules or None)

    def activations(self, backbone: Backbone, modules: Mapping[str, str], *,
                    maps: bool | None = None) -> CheckpointActivations:
        """The activations of ``modules`` (display name -> path) of ``backbone`` on the sweep's images, by one
        hooked pass with the sweep's extract options (read from the cache when it has them); full maps when a
        probe kind of the plan reads them (``maps`` overrides: False for pooled vectors only)."""
        return self.cache.get(backbone.module, dict(modules), self.images(backbone.transform),
                              fingerprint=backbone.fingerprint, options=self.extract, device=self.device,
                              progress=self.progress, native_bf16=self.native_bf16,
                              maps=self.plan.needs_maps if maps is None else maps)

    def run(
        self,
        checkpoints: Sequence[CheckpointRef],
        *,
        done: Collection[FitKey] = frozenset(),
        allow_duplicate_weights: bool = False,
        on_fit: Callable[[dict[str, Any]], None] | None = None,
        on_checkpoint: Callable[[CheckpointRef, list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Every fit not in ``done``, checkpoint by checkpoint (by epoch); returns the new results rows.

        ``on_fit(row)`` sees each row as soon as it exists; ``on_checkpoint(ref, rows)`` once a
        checkpoint's fits are all done (also for a checkpoint with nothing left to fit).
        """
        check_distinct_weights(checkpoints, allow_duplicate_weights=allow_duplicate_weights)
        done = set(done)
        out: list[dict[str, Any]] = []
        for ref in sorted(checkpoints, key=lambda c: c.epoch):
            rows = self.run_checkpoint(ref, done=done, on_fit=on_fit)
            out.extend(rows)
            if on_checkpoint is not None:
                on_checkpoint(ref, rows)
        return out

    def run_checkpoint(self, ref: CheckpointRef, *, done: Collection[FitKey] = frozenset(),
                       on_fit: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """The fits of one checkpoint not in ``done``; returns their rows (``on_fit`` sees each as it exists).

        What every executor runs: in-process checkpoint after checkpoint (``run``), or one checkpoint per
        worker task (``clipprobe.executors``). ``done`` is only read, except that the in-process loop
        passes its own set, which learns each new fit."""
        done = done if isinstance(done, set) else set(done)
        concepts = [t.concept for t in self.tasks]
        named = self.plan.modules
        if named is not None and all((c, m, p, ref.epoch) in done for c in concepts for m in named
                                     for p in self.plan.probes):
            log.info("epoch %d: every fit is already logged", ref.epoch)  # without loading the weights
            return []
        backbone = ref.backbone()
        modules = self.modules_of(backbone)
        todo = {(m, p): [c for c in concepts if (c, m, p, ref.epoch) not in done]
                for m in modules for p in self.plan.probes}
        if not any(todo.values()):
            log.info("epoch %d: every fit is already logged", ref.epoch)
            return []
        needed = {m: path for m, path in modules.items() if any(todo[(m, p)] for p in self.plan.probes)}
        acts = self.activations(backbone, needed)
        # module_index: place in the backbone's probe-module order (its defaults, then any other asked-for module)
        order = list(dict.fromkeys([*(backbone.probe_modules or {}), *modules]))
        del backbone  # only the cached activations are needed from here on
        rows: list[dict[str, Any]] = []
        pairs = [(m, p) for (m, p), cs in todo.items() if cs]
        for module, probe in tqdm(pairs, desc=f"probes epoch {ref.epoch}", unit="module x probe",
                                  disable=not self.progress):
            path = needed[module]
            kind = probe_kind(probe)
            params = self.plan.params_of(probe)
            tasks = [t for t in self.tasks if t.concept in todo[(module, probe)]]
            results = evaluate_concepts(acts.features(path, kind.features), tasks, kind, params,
                                        repeats=self.plan.repeats, permutations=self.plan.permutations,
                                        seed=self.plan.seed, device=self.device, fast_gram=self.plan.fast_gram,
                                        mdl=self.plan.mdl)
            for task, result in zip(tasks, results, strict=True):
                row = {
                    "concept": task.concept, "group": self.groups[task.concept], "module": module,
                    "module_index": order.index(module),
                    "module_path": path, "probe": probe, "epoch": int(ref.epoch),
                    "model_name": ref.name or "", "model_version": ref.version or "",
                    "fingerprint": ref.fingerprint, "precision": acts.precision_of(path),
                    "hparams_source": self.plan.source_of(probe),
                    "hparams": json.dumps(params, sort_keys=True), **result.to_dict(),
                }
                rows.append(row)
                done.add((task.concept, module, probe, int(ref.epoch)))
                if on_fit is not None:
                    on_fit(row)
        self.cache.release(acts, delete=not self.keep_cache)  # deleted unless another process still reads it
        return rows


def parse_epochs(spec: str) -> list[int] | None:
    """``all`` -> None; ``0,2,5`` -> [0, 2, 5]; ``0-3`` -> [0, 1, 2, 3]; mixtures like ``0-2,7`` too."""
    text = spec.strip().replace(" ", "")
    if text in ("", "all"):
        return None
    epochs: set[int] = set()
    for part in text.split(","):
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                epochs.update(range(a, b + 1))
            else:
                epochs.add(int(part))
        except ValueError:
            raise ValueError(f"bad epochs {spec!r}: expected all, a list like 0,2,5 or a range like 0-3") from None
    return sorted(epochs)


def parse_names(spec: str | Sequence[str] | None) -> list[str] | None:
    """``all`` (or nothing) -> None; ``a,b`` -> ["a", "b"]."""
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    return None if not items or items == ["all"] else items


LATEST = "latest"  # an epochs choice: the newest checkpoint only (`tune`'s default)


def select_checkpoints(available: Sequence[CheckpointRef], epochs: Sequence[int] | str | None) -> list[CheckpointRef]:
    """The checkpoints of the asked epochs (all when None, the newest for ``LATEST``), by epoch; an epoch that
    is not there raises naming those that are."""
    if not available:
        raise ValueError("no checkpoints to probe: register some with `clipprobe train` or `clipprobe checkpoints`")
    if epochs is None:
        return sorted(available, key=lambda c: c.epoch)
    if isinstance(epochs, str):
        if epochs != LATEST:
            raise ValueError(f"bad epochs {epochs!r}: expected all, {LATEST}, a list like 0,2,5 or a range like 0-3")
        return [max(available, key=lambda c: c.epoch)]
    by_epoch = {c.epoch: c for c in available}
    missing = [e for e in epochs if e not in by_epoch]
    if missing:
        raise ValueError(f"epoch(s) {', '.join(map(str, missing))} not registered: the model has epochs "
                         f"{', '.join(map(str, sorted(by_epoch)))}")
    return [by_epoch[e] for e in epochs]


def rows_by_epoch(rows: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        out[int(r["epoch"])].append(r)
    return out
