"""The concepts step: a ``ConceptsConfig`` resolved into a pool, its labels and a scorer (every check before a run
exists), then the pool scored (or labelled), the splits selected and everything logged under one `concepts` run."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clipprobe.concepts import build
from clipprobe.concepts.config import ConceptsConfig
from clipprobe.concepts.scoring import ClipScorer
from clipprobe.core.devices import resolve_device
from clipprobe.tracking import configs, datasets, discovery, runs

log = logging.getLogger(__name__)
CLIP_OPTIONS = ("clip_model", "clip_pretrained", "clip_weights")  # none given: on the world, the world's own CLIP


@dataclass(frozen=True)
class ConceptsInputs:
    """A resolved concepts run: its config (pool, truth, vocabulary and CLIP named), what the config points at
    (read and checked) and the CLIP scorer (None for annotations)."""

    config: ConceptsConfig
    inputs: build.ConceptInputs
    scorer: ClipScorer | None

    def tags(self) -> dict[str, str]:
        tags = {"clipprobe.pool_root": str(self.config.pool)}
        if self.scorer is not None:
            tags.update({"clipprobe.clip_weights_form": self.scorer.weights_form,
                         "clipprobe.clip_weights_sha256": self.scorer.weights_sha256 or ""})
        return tags


@dataclass(frozen=True)
class ConceptsOutcome:
    made: build.ConceptTables
    run_id: str


def resolve(config: ConceptsConfig, *, device: str, clip_given: bool = True,
            experiment_name: str | None = None) -> ConceptsInputs:
    """``config`` with its pool (the latest world's pool and truth when none is given: ``NotFound`` naming
    --pool), vocabulary and CLIP named (on the concept world with ``clip_given`` False: the CLIP the latest clip
    run trained on it), its inputs read and its scorer loaded. ``LookupError``, ``ValueError``,
    ``FileNotFoundError`` or ``RuntimeError`` (weights that cannot be fetched or loaded) before any run exists."""
    if config.pool is None:
        world, run_id = discovery.require_world_root("--pool", experiment_name=experiment_name)
        config = config.replace(pool=world / "pool", truth=config.truth or world / "truth.parquet")
        log.info("pool from world run %s: %s", run_id, config.pool)
    config = config.resolved()
    found = discovery.latest_world_clip(config.pool.parent) \
        if config.source == "clip" and config.on_world and not clip_given else None
    if found is not None:  # the CLIP the clip step trained on this world, not a download
        config = config.replace(clip_model=found[0], clip_weights=found[1])
        log.info("CLIP of the latest clip run on this world: %s, %s", *found)
    inputs = build.read_inputs(config)
    return ConceptsInputs(config, inputs, build.create_scorer(config, resolve_device(device)))


def run(resolved: ConceptsInputs, *, cache_dir: str | Path | None = None,
        experiment_name: str | None = None) -> ConceptsOutcome:
    """Open the concepts run, log the config, make the tables (CLIP's score chunks kept under ``cache_dir``,
    default the cache root's ``scores``) and log them: files, dataset inputs and metrics."""
    config, inputs, scorer = resolved.config, resolved.inputs, resolved.scorer
    params = build.run_params(config, inputs, scorer)
    with runs.step_run("concepts", experiment_name=experiment_name, params=params, tags=resolved.tags()) as active, \
            tempfile.TemporaryDirectory() as tmp:
        configs.log_config(config)
        made = build.make_concepts(config, inputs, scorer, cache_dir=cache_dir)
        out = Path(tmp) / "concepts"
        made.write(out, config.pool)
        runs.log_artifacts(out, "concepts")
        for name, df in (("scores", made.scores), ("splits", made.splits)):
            datasets.log_dataset_input(df, name=f"concepts-{name}", context=f"concepts.{name}",
                                       artifact_path=f"concepts/{name}.parquet")
        if made.images_per_second is not None:
            runs.log_metrics({"images_per_second": made.images_per_second})
        runs.log_metrics(made.metrics())
    return ConceptsOutcome(made, active.info.run_id)


def summary(done: ConceptsOutcome, resolved: ConceptsInputs) -> list[str]:
    """What the command prints after the run: split sizes, CLIP's label quality, unreadable images, the run."""
    from clipprobe.concepts.label_quality import quality_text

    made = done.made
    lines: list[str] = [made.sizes.to_string()]
    if made.clip_quality is not None:
        lines += ["CLIP's labels against the truth (precision of the top-k positives, of the negatives; "
                  "share of test labels that are right):", quality_text(made.clip_quality)]
    if made.unreadable:
        lines.append(f"{len(made.unreadable)} unreadable image(s) skipped (listed in concepts/unreadable.txt)")
    lines.append(f"concept splits of {len(resolved.inputs.paths)} images logged to run {done.run_id}")
    return lines
