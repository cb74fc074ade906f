"""Activations of probe modules: one hooked forward pass per checkpoint, pooled and full maps, on-disk cache.

Pooled ("gap", mean over height x width) vectors are kept in float32. Full maps are stored on disk
centred: a per-feature offset (``map_offset``: the float32 mean of the first batch of images where it
exceeds their spread, kept in float32) is subtracted and the remainder stored as bfloat16 bit patterns
(uint16 ``.npy``). Rounding then costs
2^-9 of each value's distance from its offset, not of its size: deep features of a trained network
sit at 1e4 to 1e7 times their spread from zero, which bf16 of the raw values would erase. bf16 keeps
float32's exponent range, so the ~1e-9 activations of a randomly initialised network survive too.
A cache folder is keyed by the checkpoint fingerprint, the image set, the transform and the layout
options; inside it each module's files carry the precision its forward pass ran in (fp32 or bf16),
so an ``auto`` pass shares files with explicit passes of the precision it chose per module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipprobe.activations.decoding import ImageSet, save_atomic, temporary_beside
from clipprobe.activations.features import Bf16Matrix, PooledFeatures
from clipprobe.activations.hooks import forward_activations, map_offset, pooled
from clipprobe.activations.options import FORMAT_VERSION, ExtractOptions
from clipprobe.activations.precision import calibrate
from clipprobe.core.caches import ACTIVATIONS, cache_dir

log = logging.getLogger(__name__)





class CheckpointActivations:
    """The activations of one checkpoint over one image set, read per module from a cache folder.

    ``precisions`` maps each module path to the precision its forward pass ran in (fp32 or bf16);
    ``calibration`` holds the ``auto`` decisions behind them (``calibrate``'s entries), if any.
    """

    def __init__(self, folder: Path, meta: Mapping[str, Any], precisions: Mapping[str, str],
                 calibration: Mapping[str, Mapping[str, Any]] | None = None, lease: Path | None = None) -> None:
        self.folder = folder
        self.lease = lease  # this reader's lease file in the folder (``ActivationCache.release`` gives it back)
        self.meta = dict(meta)
        self.precisions = dict(precisions)
        self.calibration = {p: dict(c) for p, c in (calibration or {}).items()}

    @property
    def modules(self) -> list[str]:
        """Module paths held."""
        return list(self.precisions)

    def precision_of(self, path: str) -> str:
        """``fp32`` or ``bf16``: the precision the forward pass ran in for this module."""
        self._check(path)
        return self.precisions[path]

    def calibration_of(self, path: str) -> dict[str, Any] | None:
        """The ``auto`` decision for this module (``calibrate``'s entry), or None for an explicit precision."""
        self._check(path)
        return self.calibration.get(path)

    def _check(self, path: str) -> None:
        if path not in self.precisions:
            raise KeyError(f"module {path!r} is not in the cache {self.folder}: it holds {', '.join(self.modules)}")

    def _file(self, path: str, what: str) -> Path:
        return self.folder / f"{path}.{self.precision_of(path)}.{what}.npy"

    def gap(self, path: str) -> PooledFeatures:
        """Pooled activations ``(images, channels)``, float32 (a ndarray that carries ``computed_in``)."""
        out = np.load(self._file(path, "gap")).view(PooledFeatures)
        out.computed_in = self.precision_of(path)
        return out

    def map_offset(self, path: str) -> np.ndarray:
        """The float32 per-feature offset subtracted from the full maps before bf16 storage."""
        return np.load(self._file(path, "map_offset"))

    def map(self, path: str) -> Bf16Matrix:
        """Full maps ``(images, channels*height*width)``: bf16 bits of ``value - offset`` on disk, read as float32."""
        if not has_maps(self.map_shape(path)):
            raise ValueError(f"module {path!r} outputs {self.map_shape(path)[0]} values an image, not maps: it has no "
                             "full maps for a non-gap probe kind; probe it with a gap kind (linear_gap, non_linear_gap)")
        if not self._file(path, "map").is_file():
            raise KeyError(f"module {path!r} has no full maps in {self.folder}: its pass stored pooled vectors only "
                           "(ActivationCache.get(..., maps=False)); get it again with maps=True")
        return Bf16Matrix(np.load(self._file(path, "map"), mmap_mode="r"), self.map_offset(path),
                          computed_in=self.precision_of(path))

    def map_shape(self, path: str) -> tuple[int, ...]:
        """``(channels, height, width)`` of a module's output; ``(classes,)`` for ``logits``."""
        self._check(path)
        return tuple(self.meta["shapes"][path])

    def features(self, path: str, kind: str) -> PooledFeatures | Bf16Matrix:
        """``gap`` or ``map`` features of a module; both say the precision they were computed (and stored) in."""
        if kind == "gap":
            return self.gap(path)
        if kind == "map":
            return self.map(path)
        raise ValueError(f"unknown feature kind {kind!r}: expected gap or map")


def _merge_meta(meta_path: Path, mine: dict[str, Any]) -> dict[str, Any]:
    """``mine`` plus what another process sharing the folder recorded in meta.json since it was read (its
    stored modules, shapes and calibration decisions), so neither process's work is forgotten."""
    try:
        theirs = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return mine
    if theirs.get("format") != mine.get("format"):
        return mine
    merged = {**mine, "stored": {}, "shapes": {**theirs.get("shapes", {}), **mine["shapes"]},
              "calibration": {k: {**theirs.get("calibration", {}).get(k, {}), **v}
                              for k, v in {**theirs.get("calibration", {}), **mine["calibration"]}.items()}}
    for source in (theirs.get("stored", {}), mine["stored"]):
        for path, precisions in source.items():
            merged["stored"].setdefault(path, [])
            merged["stored"][path] += [p for p in precisions if p not in merged["stored"][path]]
    return merged


GAP_ONLY = ":gap"  # a meta.json ``stored`` entry "fp32:gap": that precision's pooled vectors, no full maps


def has_maps(shape: Sequence[int]) -> bool:
    """Whether a module output of this per-image shape has full maps: ``(channels, height, width)`` does;
    ``(classes,)`` (``logits``) is its own pooled vector and has none."""
    return len(shape) == 3


def holds(stored: Sequence[str], precision: str, maps: bool = True) -> bool:
    """Whether a module's ``stored`` entries (meta.json) hold its ``precision`` files, with full maps if ``maps``."""
    return precision in stored or (not maps and f"{precision}{GAP_ONLY}" in stored)


LEASES = "leases"  # in a cache folder: one file per process reading it, named <pid>@<host>.<random>


def _lease_alive(lease: Path) -> bool:
    """Whether the process named by a lease file may still read its folder: on this host, while its pid
    lives; on another host (a shared filesystem), always, as nothing here can tell."""
    pid, _, rest = lease.name.partition("@")
    host = rest.rsplit(".", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class ActivationCache:
    """Folders of per-module activation files under ``root``, one per (checkpoint, images, transform, layout);
    in a folder, each module's files per precision it was computed in.

    Every ``get`` takes a lease on its folder (a file in ``leases/``) and ``release`` gives it back; with
    ``delete=True`` the folder goes only when no live process holds a lease on it, so a sweep with
    ``--no-keep-cache`` never deletes activations another process is computing or reading. Leases and
    deletions are ordered by a lock file per folder under ``root/.locks``.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = cache_dir(ACTIVATIONS, root)  # None: the activations folder of the cache root

    def folder(self, fingerprint: str, images: ImageSet | str, options: ExtractOptions) -> Path:
        """The folder of one checkpoint's activations on an image set (or its ``image_set_key``)."""
        key = images if isinstance(images, str) else images.key
        return self.root / f"{fingerprint[:16]}-{key}-{options.key()}"

    def stored(self, folder: Path) -> dict[str, list[str]]:
        """What ``folder``'s meta.json says it holds (module path -> precisions); empty when nothing yet."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return meta.get("stored", {}) if meta.get("format") == FORMAT_VERSION else {}

    def get(
        self,
        model: nn.Module,
        modules: Mapping[str, str],
        images: ImageSet,
        *,
        fingerprint: str,
        options: ExtractOptions = ExtractOptions(),
        device: str | torch.device = "cpu",
        progress: bool = True,
        native_bf16: bool | None = None,
        maps: bool = True,
    ) -> CheckpointActivations:
        """The activations of ``modules`` (display name -> path); runs a pass for the ones not cached.

        ``maps=False`` (no probe of the sweep reads full maps) stores the pooled vectors only: at 224 px the
        maps are ~2 MB an image, the pooled vectors ~12 KB. Such a module is recorded as ``<precision>:gap``
        in meta.json's ``stored``, and a later ``get`` that wants its maps runs its pass again.

        With ``auto`` precision on a device with native bf16 (``native_bf16`` overrides
        ``devices.native_bf16(device)``), each module not yet decided is calibrated (``calibrate``) and the
        decision kept in the folder's meta.json; then one bf16 pass for the modules that passed and one
        fp32 pass for the others, each only for files not already cached (explicit passes share them).
        """
        options = options.resolve(device, native_bf16)
        folder = self.folder(fingerprint, images, options)
        lease = self._take_lease(folder)
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("format") != FORMAT_VERSION:
            meta = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "images": images.key,
                    "n_images": len(images), "options": options.key(), "stored": {}, "shapes": {},
                    "calibration": {}}
        wanted = list(dict.fromkeys(modules.values()))
        changed = False
        chosen: dict[str, dict[str, Any]] = {}
        if options.precision == "auto":
            decided = meta["calibration"].setdefault(options.calibration_key(), {})
            undecided = [p for p in wanted if p not in decided]
            if undecided:
                log.info("activations %s: calibrating bf16 on %d images for %d modules", folder.name,
                         min(len(images), options.calibration_images), len(undecided))
                decided.update(calibrate(model, undecided, images.pixels, options=options, device=device))
                changed = True
            chosen = {p: decided[p] for p in wanted}
            plan = {p: decided[p]["precision"] for p in wanted}
        else:
            plan = dict.fromkeys(wanted, options.precision)
        for precision in ("bf16", "fp32"):
            todo = [p for p in wanted if plan[p] == precision and not holds(
                meta["stored"].get(p, []), precision, maps and has_maps(meta["shapes"].get(p, (0, 0, 0))))]
            if not todo:
                continue
            log.info("activations %s: one %s pass over %d images for %d modules", folder.name, precision,
                     len(images), len(todo))
            shapes = self._extract(model, todo, images, folder, dataclasses.replace(options, precision=precision),
                                   device, progress, maps=maps)
            meta["shapes"].update(shapes)
            for p in todo:
                meta["stored"].setdefault(p, []).append(precision if maps and has_maps(shapes[p])
                                                        else f"{precision}{GAP_ONLY}")
            changed = True
        if changed:
            with self._locked(folder):  # read, merge and replace as one step: two writers never lose each other's
                meta = _merge_meta(meta_path, meta)
                tmp = temporary_beside(meta_path)
                tmp.write_text(json.dumps(meta, indent=1))
                os.replace(tmp, meta_path)
        else:
            log.info("activations %s: read from cache", folder.name)
        return CheckpointActivations(folder, meta, plan, chosen, lease=lease)

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        """The folder's lock (an ``flock`` on ``root/.locks/<folder>``), held for the block."""
        import fcntl  # POSIX; the lock file outlives the folder, so a deleter and a new reader share it

        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / folder.name, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _take_lease(self, folder: Path) -> Path:
        """Create ``folder`` if needed and a lease on it for this process, under the folder's lock (so a
        deletion either happened before, and the folder is new, or waits for the next check)."""
        with self._locked(folder):
            (folder / LEASES).mkdir(parents=True, exist_ok=True)
            lease = folder / LEASES / f"{os.getpid()}@{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
            lease.touch()
        return lease

    def release(self, acts: CheckpointActivations, *, delete: bool = False) -> bool:
        """Give back ``acts``'s lease; with ``delete``, delete its folder unless a live process still holds
        one (leases of dead processes on this host are dropped). True when the folder was deleted."""
        folder = acts.folder
        with self._locked(folder):
            if acts.lease is not None:
                acts.lease.unlink(missing_ok=True)
                acts.lease = None
            if not delete or not folder.is_dir():
                return False
            leases = list((folder / LEASES).glob("*")) if (folder / LEASES).is_dir() else []
            holders = [lease for lease in leases if _lease_alive(lease)]
            for stale in set(leases) - set(holders):
                stale.unlink(missing_ok=True)
            if holders:
                log.info("activations %s: kept, still read by %s", folder.name,
                         ", ".join(sorted(h.name.rsplit(".", 1)[0] for h in holders)))
                return False
            trash = folder.with_name(f"{folder.name}.deleting-{uuid.uuid4().hex[:12]}")
            os.replace(folder, trash)  # gone from its name at once; the files go after the lock is released
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _extract(self, model: nn.Module, todo: list[str], images: ImageSet, folder: Path,
                 options: ExtractOptions, device: str | torch.device, progress: bool,
                 maps: bool = True) -> dict[str, list[int]]:
        n = len(images)
        precision = options.precision
        want_maps = maps
        gaps: dict[str, np.ndarray] = {}
        stored_maps: dict[str, np.ndarray] = {}
        offsets: dict[str, torch.Tensor] = {}
        shapes: dict[str, list[int]] = {}

        def sink(path: str, start: int, out: torch.Tensor) -> None:
            if out.ndim not in (2, 4):
                raise ValueError(f"module {path!r} outputs shape {tuple(out.shape)}: expected (batch, channels, height, "
                                 "width), or (batch, classes) for logits")
            values = out.float()
            if path not in gaps:
                shapes[path] = list(out.shape[1:])
                gaps[path] = np.empty((n, out.shape[1]), dtype=np.float32)
            maps_here = want_maps and out.ndim == 4  # logits (batch, classes): pooled = itself, no maps
            if maps_here and path not in stored_maps:
                stored_maps[path] = np.lib.format.open_memmap(
                    temporary_beside(folder / f"{path}.{precision}.map.npy"), mode="w+", dtype=np.uint16, shape=(n, out[0].numel()))
                offsets[path] = map_offset(values)
            stop = start + out.shape[0]
            gaps[path][start:stop] = pooled(values).cpu().numpy()
            if not maps_here:
                return
            # torch copies the centred bf16 bits from the output's layout (channels_last) into the memmap's rows
            bits = (values - offsets[path]).to(torch.bfloat16).view(torch.int16)
            torch.from_numpy(stored_maps[path][start:stop].view(np.int16)).view(out.shape).copy_(bits)

        forward_activations(model, {p: p for p in todo}, images.pixels, sink, options=options,
                            device=device, progress=progress)
        for path in todo:
            save_atomic(folder / f"{path}.{precision}.gap.npy", gaps[path])
            if path not in stored_maps:
                continue
            save_atomic(folder / f"{path}.{precision}.map_offset.npy", offsets[path].reshape(-1).cpu().numpy())
            stored_maps[path].flush()
            tmp = stored_maps[path].filename
            del stored_maps[path]
            os.replace(tmp, folder / f"{path}.{precision}.map.npy")
        return shapes
