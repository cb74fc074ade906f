"""Backbone checkpoints as MLflow logged models, registered as versions with an alias per epoch.

A version carries the tags ``clipprobe.epoch``, ``clipprobe.source`` and ``clipprobe.fingerprint``
and the alias ``epoch-007``; ``models:/<name>@epoch-007`` loads an eager ``nn.Module``
(pickle serialisation, so forward hooks fire). Re-importing a known fingerprint + epoch is a no-op.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import torch
import torchvision
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn
from tqdm import tqdm

from clipprobe.backbones.checkpoints import (
    CheckpointError,
    epoch_from_name,
    fingerprint,
    load_into,
    model_shape,
    read_checkpoint,
)
from clipprobe.backbones.loader import LoadedModel
from clipprobe.tracking.runs import EPOCH_TAG, MODEL_NAME_TAG  # noqa: F401 (registry.MODEL_NAME_TAG, as before)

log = logging.getLogger(__name__)

SOURCE_TAG = "clipprobe.source"
FINGERPRINT_TAG = "clipprobe.fingerprint"
DUPLICATE_TAG = "clipprobe.duplicate_of"
ARCHITECTURE_TAG = "clipprobe.architecture"
PROBED_BY_TAG = "clipprobe.probed_by"  # on a version: the sweep runs that probed it, oldest first
SWEEP_VERSIONS_TAG = "clipprobe.model_versions"  # on a sweep run: name/version of every version it probed
# What the MLflow UI reads to show a logged model as registered (mlflow.register_model sets it too).
LOGGED_MODEL_VERSIONS_TAG = "mlflow.modelVersions"
_TAG_LIMIT = 5000  # registry tag values: MLflow's limit
# Everything the loader needs besides the weights; stored as version tags and in the MLmodel file.
METADATA_KEYS = ("architecture", "width_mult", "num_classes", "val_resize_size", "val_crop_size", "classes",
                 "weights")
WEIGHTS_TAG = "clipprobe.weights"  # model or ema: which weights of the file the version holds
# Explicit requirements: inferring them costs seconds per logged model (benchmarks/results/code_timings.md).
PIP_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    f"torchvision=={torchvision.__version__.split('+')[0]}",
    f"mlflow=={mlflow.__version__}",
]
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w\-]+)|/(?P<version>\d+))?$")


class _PickleNoticeFilter(logging.Filter):
    """Drop MLflow's per-model pickle notice: pickle is chosen on purpose (hooks need the eager module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Pickle or CloudPickle" not in record.getMessage()


logging.getLogger("mlflow.pytorch").addFilter(_PickleNoticeFilter())


def epoch_alias(epoch: int) -> str:
    """The registry alias of an epoch: ``epoch-007`` (3 digits at least)."""
    return f"epoch-{int(epoch):03d}"


@dataclass(frozen=True)
class RegisteredCheckpoint:
    """One registered checkpoint version of a model."""

    name: str
    version: str
    epoch: int
    fingerprint: str
    source: str
    duplicate_of: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def alias(self) -> str:
        return epoch_alias(self.epoch)

    @property
    def duplicate(self) -> bool:
        return bool(self.duplicate_of)


def _as_checkpoint(mv: ModelVersion) -> RegisteredCheckpoint | None:
    tags = dict(mv.tags or {})
    if EPOCH_TAG not in tags or FINGERPRINT_TAG not in tags:
        return None  # a version clipprobe did not register
    dup = tuple(t for t in tags.get(DUPLICATE_TAG, "").split(",") if t)
    return RegisteredCheckpoint(name=mv.name, version=str(mv.version), epoch=int(tags[EPOCH_TAG]),
                                fingerprint=tags[FINGERPRINT_TAG], source=tags.get(SOURCE_TAG, ""),
                                duplicate_of=dup, tags=tags)


def _all_versions(name: str) -> list[RegisteredCheckpoint]:
    client = MlflowClient()
    out: list[RegisteredCheckpoint] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        out.extend(c for c in (_as_checkpoint(mv) for mv in page) if c is not None)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda c: (c.epoch, int(c.version)))


def list_checkpoints(name: str, *, all_versions: bool = False) -> list[RegisteredCheckpoint]:
    """Registered checkpoints of a model sorted by epoch: the version each ``epoch-NNN`` alias
    points to (the newest of that epoch), or every version with ``all_versions``."""
    versions = _all_versions(name)
    if all_versions:
        return versions
    newest: dict[int, RegisteredCheckpoint] = {}
    for ckpt in versions:
        newest[ckpt.epoch] = ckpt
    return [newest[e] for e in sorted(newest)]


def _to_cpu(model: nn.Module) -> nn.Module:
    on_cpu = all(t.device.type == "cpu" for t in model.state_dict().values())
    return model if on_cpu else copy.deepcopy(model).cpu()


_KNOWN_MODELS: set[tuple[str, str]] = set()


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    key = (mlflow.get_registry_uri(), name)
    if key in _KNOWN_MODELS:
        return
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Backbone checkpoints registered by clipprobe; "
                                       "alias epoch-NNN = the checkpoint of epoch NNN.")
        log.info("registered model %r created", name)
    _KNOWN_MODELS.add(key)


def log_checkpoint(
    model: nn.Module,
    *,
    name: str,
    epoch: int,
    source: str | Path,
    metadata: Mapping[str, Any],
    fingerprint_: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> RegisteredCheckpoint:
    """Log ``model`` as a logged model (step=epoch) on the active run and register it as a version
    of ``name`` with the epoch, source and fingerprint tags and the alias ``epoch-NNN``."""
    model = _to_cpu(model)
    digest = fingerprint_ or fingerprint(model.state_dict())
    meta = {k: metadata[k] for k in METADATA_KEYS if metadata.get(k) is not None}
    meta.update(epoch=int(epoch), fingerprint=digest, source=str(source))
    info = mlflow.pytorch.log_model(
        model, name=f"{name}-{epoch_alias(epoch)}", step=int(epoch), serialization_format="pickle",
        pip_requirements=PIP_REQUIREMENTS, metadata=meta,
    )
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(epoch), model_id=info.model_id)
    tags = {EPOCH_TAG: str(int(epoch)), SOURCE_TAG: str(source), FINGERPRINT_TAG: digest}
    # Scalars only: a class list (1000 ImageNet names) would pass the tag length limit; it stays in MLmodel.
    tags.update({f"clipprobe.{k}": str(meta[k]) for k in METADATA_KEYS if k in meta and k != "classes"})
    client = MlflowClient()
    _ensure_registered_model(client, name)
    # The client call, not mlflow.register_model: that one retries creating the model and prints twice
    # per version, which is 600 lines for a 300-epoch import.
    active = mlflow.active_run()
    mv = client.create_model_version(name, source=info.model_uri, run_id=active.info.run_id if active else None,
                                     tags=tags, model_id=info.model_id)
    client.set_registered_model_alias(name, epoch_alias(epoch), mv.version)
    mark_registered(client, info.model_id, name, str(mv.version))
    client.update_model_version(name, mv.version, description=_version_description(name, epoch, str(source), []))
    return RegisteredCheckpoint(name=name, version=str(mv.version), epoch=int(epoch), fingerprint=digest,
                                source=str(source), tags=tags)


def mark_registered(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Record the version on its logged model, as ``mlflow.register_model`` does, so the UI shows the
    logged model as registered (with a link to the version) instead of offering "Register model"."""
    model = client.get_logged_model(model_id)
    known = json.loads(model.tags.get(LOGGED_MODEL_VERSIONS_TAG) or "[]")
    entry = {"name": name, "version": str(version)}
    if entry not in known:
        client.set_logged_model_tags(model_id, {LOGGED_MODEL_VERSIONS_TAG: json.dumps([*known, entry])})


def _run_link(run_id: str, experiment_id: str | None, label: str) -> str:
    """A Markdown link the MLflow UI follows (its pages live under ``#/``)."""
    return f"[{label}](#/experiments/{experiment_id}/runs/{run_id})" if experiment_id else f"{label} ({run_id})"


def _version_description(name: str, epoch: int, source: str, sweeps: Sequence[tuple[str, str | None, str]]) -> str:
    """A version's description: what it is, and the sweeps that probed it (newest last)."""
    lines = [f"Epoch {int(epoch)} of `{name}` (alias `{epoch_alias(epoch)}`), registered by clipprobe from "
             f"`{source}`. Load it with `models:/{name}@{epoch_alias(epoch)}`."]
    if sweeps:
        lines += ["", "Probed by:"] + [f"- {_run_link(run_id, exp, label)}" for run_id, exp, label in sweeps]
    else:
        lines += ["", "Not probed yet: `clipprobe probe --model-name " + name + "`."]
    return "\n".join(lines)


def _kept(ids: Sequence[str]) -> str:
    """Comma-joined ids, dropping the oldest while the value passes the tag limit."""
    ids = list(ids)
    while ids and len(",".join(ids)) > _TAG_LIMIT:
        ids.pop(0)
    return ",".join(ids)


def link_sweep(sweep_run_id: str, name: str, versions: Sequence[str]) -> list[str]:
    """Point each probed version to the sweep (tag ``clipprobe.probed_by``, a link in its description)
    and the sweep to the versions (tag ``clipprobe.model_versions`` = ``name/version,...``). Returns the
    versions linked: one no longer in the registry is skipped with a warning."""
    client = MlflowClient()
    sweep = client.get_run(sweep_run_id)
    linked = []
    for version in versions:
        try:
            mv = client.get_model_version(name, str(version))
        except MlflowException:
            log.warning("sweep %s probed %s version %s, which is not in the registry: not linked",
                        sweep_run_id, name, version)
            continue
        linked.append(str(version))
        tags = dict(mv.tags or {})
        probed = [s for s in tags.get(PROBED_BY_TAG, "").split(",") if s]
        if sweep_run_id not in probed:
            probed.append(sweep_run_id)
            client.set_model_version_tag(name, str(version), PROBED_BY_TAG, _kept(probed))
        sweeps = []
        for run_id in probed:
            try:
                run = sweep if run_id == sweep_run_id else client.get_run(run_id)
            except MlflowException:
                continue  # a deleted sweep: no link
            sweeps.append((run_id, run.info.experiment_id, f"{run.info.run_name} ({run_id[:8]})"))
        epoch = int(tags.get(EPOCH_TAG, 0))
        client.update_model_version(name, str(version), description=_version_description(
            name, epoch, tags.get(SOURCE_TAG, ""), sweeps))
    if linked:
        client.set_tag(sweep_run_id, SWEEP_VERSIONS_TAG, ",".join(f"{name}/{v}" for v in linked)[:_TAG_LIMIT])
    return linked


def mark_duplicates(name: str) -> list[list[RegisteredCheckpoint]]:
    """Tag versions whose weights repeat across epochs with ``clipprobe.duplicate_of`` (the other
    epochs' aliases) and warn once per group; returns the groups."""
    by_digest: dict[str, list[RegisteredCheckpoint]] = defaultdict(list)
    for ckpt in list_checkpoints(name, all_versions=True):
        by_digest[ckpt.fingerprint].append(ckpt)
    client = MlflowClient()
    groups = []
    for digest, group in by_digest.items():
        epochs = sorted({c.epoch for c in group})
        if len(epochs) < 2:
            continue
        groups.append(group)
        log.warning(
            "model %r: epochs %s have the SAME weights (fingerprint %s..., files %s); they are not "
            "different points in training, so probing them as a 'when' axis shows nothing",
            name, ", ".join(map(str, epochs)), digest[:12], ", ".join(sorted({Path(c.source).name for c in group})),
        )
        for ckpt in group:
            others = ",".join(epoch_alias(e) for e in epochs if e != ckpt.epoch)
            if ckpt.tags.get(DUPLICATE_TAG) != others:
                client.set_model_version_tag(name, ckpt.version, DUPLICATE_TAG, others)
    return groups


@dataclass
class ImportSummary:
    """What one import did: new versions, files already registered, copies of another file of the
    folder (the recipe's checkpoint.pth), files skipped (with reasons)."""

    imported: list[RegisteredCheckpoint] = field(default_factory=list)
    already: list[RegisteredCheckpoint] = field(default_factory=list)
    copies: list[tuple[Path, Path]] = field(default_factory=list)  # (copy, the file it copies)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[list[RegisteredCheckpoint]] = field(default_factory=list)


def _import_order(path: Path) -> tuple:
    # Files that name their epoch (model_7.pth) first, in epoch order; then the others
    # (checkpoint.pth), so a copy is recognised as the copy of the file that names its epoch.
    epoch = epoch_from_name(path)
    return (epoch is None, epoch or 0, str(path))


def _check_weights_kind(name: str, versions: Sequence[RegisteredCheckpoint], weights: str) -> None:
    other = sorted({c.tags.get(WEIGHTS_TAG, "model") for c in versions} - {weights})
    if other:
        raise ValueError(
            f"registered model {name!r} holds {other[0]} weights, not {weights}: import the {weights} "
            f"weights under their own name, e.g. --model-name {name}-{weights}"
        )


class RegistryConflict(ValueError):
    """A checkpoint whose epoch the registered model already holds with other weights."""


def import_checkpoints(
    paths: Iterable[str | Path],
    *,
    name: str,
    architecture: str,
    width_mult: float | None = None,
    num_classes: int | None = None,
    weights: str = "model",
    progress: bool = True,
) -> ImportSummary:
    """Read, check, fingerprint, log and register each checkpoint file on the active run.

    The architecture's hyper-parameters come from each file's ``args``, else the arguments, else
    the weights (``model_shape``). ``weights="ema"`` registers the files' ``model_ema`` weights
    (tag ``clipprobe.weights``); a model holds one kind only. One version per epoch and file
    set: a file whose name carries no epoch (torchvision's ``checkpoint.pth``, a copy of the
    latest ``model_N.pth``) with the same epoch and weights as another is counted as its copy,
    with other weights it is skipped. A bad file is skipped with one warning naming it; the
    others still import.
    """
    summary = ImportSummary()
    versions = _all_versions(name)
    _check_weights_kind(name, versions, weights)
    known = {(c.fingerprint, c.epoch): c for c in versions}
    holding = {c.epoch: c for c in versions}  # the version each epoch-NNN alias points at (the newest)
    read_now: dict[int, tuple[str, Path]] = {}  # epoch -> (fingerprint, file) of this import's files
    models: dict[tuple, nn.Module] = {}  # one module per shape, reused: building one costs more than loading
    for path in tqdm(sorted(map(Path, paths), key=_import_order), desc="import", unit="ckpt",
                     disable=not progress):
        try:
            ckpt = read_checkpoint(path, weights=weights)
            saved_arch = ckpt.args.get("model") or ckpt.args.get("architecture")
            if saved_arch and saved_arch != architecture:
                raise CheckpointError(
                    f"{path}: saved from {saved_arch!r} (its args), not {architecture!r}; "
                    f"import it with --arch {saved_arch} under its own model name"
                )
            shape = model_shape(ckpt, architecture, width_mult=width_mult, num_classes=num_classes)
            key = (shape.architecture, shape.width_mult, shape.num_classes)
            if key not in models:
                models[key] = shape.build()
            model = models[key]
            load_into(model, ckpt, shape.label, assign=True)
            digest = fingerprint(ckpt.state_dict)
            same_epoch = read_now.get(ckpt.epoch)
            if same_epoch is not None and same_epoch[0] != digest:
                raise CheckpointError(
                    f"{path}: epoch {ckpt.epoch} like {same_epoch[1].name} but with other weights; one "
                    "version per epoch: move the stale file out of the folder"
                )
        except (CheckpointError, ValueError) as err:
            log.warning("skipped %s", err)
            summary.skipped.append((path, str(err)))
            continue
        if same_epoch is not None:
            log.info("%s: the copy of %s (epoch %d, same weights): not registered twice",
                     path, same_epoch[1].name, ckpt.epoch)
            summary.copies.append((path, same_epoch[1]))
            continue
        read_now[ckpt.epoch] = (digest, path)
        held = holding.get(ckpt.epoch)
        if held is not None and held.fingerprint != digest and (digest, ckpt.epoch) not in known:
            # Re-pointing epoch-NNN would splice two training runs into one "when" axis, silently.
            raise RegistryConflict(
                f"{path}: epoch {ckpt.epoch} of '{name}' is registered already with other weights (version "
                f"{held.version}, from {held.source or 'an unknown file'}): import this folder under its own "
                "--model-name, or delete those versions of the registered model first")
        if (digest, ckpt.epoch) in known:
            summary.already.append(known[(digest, ckpt.epoch)])
            log.debug("%s: already registered as %s version %s", path, name, known[(digest, ckpt.epoch)].version)
            continue
        meta = {**ckpt.args, "architecture": shape.architecture, "width_mult": shape.width_mult,
                "num_classes": shape.num_classes, "weights": weights}
        registered = log_checkpoint(model, name=name, epoch=ckpt.epoch, source=path.resolve(), metadata=meta,
                                    fingerprint_=digest)
        known[(digest, ckpt.epoch)] = registered
        summary.imported.append(registered)
    if summary.imported:
        summary.duplicates = mark_duplicates(name)
    return summary


def model_aliases(name: str) -> dict[str, str]:
    """``alias -> version`` of a registered model as the registry holds them now (empty when there is no such
    model); an alias goes when its version is deleted."""
    try:
        return dict(MlflowClient().get_registered_model(name).aliases or {})
    except MlflowException:
        return {}


def resolve_version(uri: str) -> ModelVersion | None:
    """The registry version a ``models:/name@alias`` or ``models:/name/version`` URI names, else None
    (a ``models:/<model_id>`` logged model)."""
    match = _MODELS_URI.match(uri)
    if not match:
        raise ValueError(f"not a models:/ URI: {uri!r}; expected models:/<name>@epoch-007 or models:/<name>/<version>")
    client = MlflowClient()
    name, alias, version = match.group("name"), match.group("alias"), match.group("version")
    if name.startswith("m-") and not alias and not version:
        return None
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
    except MlflowException as err:
        known = ", ".join(sorted(model_aliases(name))) if alias else ""
        hint = f" (aliases: {known})" if known else ""
        raise ValueError(f"{uri}: no such registered model version{hint}: {err.message.splitlines()[0]}") from None
    raise ValueError(f"{uri}: name an alias or a version, e.g. models:/{name}@epoch-001")


def load_model(uri: str) -> LoadedModel:
    """Load a checkpoint logged by clipprobe from a ``models:/`` URI, with its metadata."""
    mv = resolve_version(uri)
    source_uri = uri if mv is None else f"models:/{mv.name}/{mv.version}"
    module = mlflow.pytorch.load_model(source_uri, map_location="cpu")
    metadata = dict(mlflow.models.get_model_info(source_uri).metadata or {})
    if mv is not None and not metadata:
        metadata = {k.removeprefix("clipprobe."): v for k, v in (mv.tags or {}).items()}
    return LoadedModel(module=module, metadata=metadata, name=mv.name if mv else None,
                       version=str(mv.version) if mv else None)


def latest_epoch(name: str) -> int:
    """The highest registered epoch of a model; ValueError naming the model when it has none."""
    ckpts: Sequence[RegisteredCheckpoint] = list_checkpoints(name)
    if not ckpts:
        raise ValueError(f"registered model {name!r} has no clipprobe checkpoints: run `clipprobe train` "
                         "or `clipprobe checkpoints FOLDER` first")
    return ckpts[-1].epoch


class MlflowRegistry:
    """MLflow's model registry as ``backbones.loader.ModelRegistry``: what ``load_backbone`` receives."""

    def uri(self, name: str, epoch: int | None) -> str:
        """``models:/<name>@epoch-007``; epoch None: the highest registered epoch.

        When the alias is gone (its version was deleted in the UI: MLflow deletes the alias with it) but an
        older version of that epoch is left, that version, the one a probe sweep would take
        (``list_checkpoints``), as ``models:/<name>/<version>``, with a warning."""
        wanted = latest_epoch(name) if epoch is None else epoch
        alias = epoch_alias(wanted)
        if alias in model_aliases(name):
            return f"models:/{name}@{alias}"
        left = {c.epoch: c for c in list_checkpoints(name)}.get(wanted)
        if left is None:
            return f"models:/{name}@{alias}"  # resolve_version names the aliases that do exist
        log.warning("registered model %r has no alias %s (its version was deleted): loading version %s, the newest "
                    "version of epoch %d left", name, alias, left.version, wanted)
        return f"models:/{name}/{left.version}"

    def load(self, uri: str) -> LoadedModel:
        """``load_model(uri)``."""
        return load_model(uri)


MLFLOW_REGISTRY = MlflowRegistry()
