"""`clipprobe concepts`: score an image pool with CLIP (or take known labels), pick per-concept splits, log them."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import tempfile
from pathlib import Path

import click

from clipprobe.cli import options
from clipprobe.concepts.annotations import (
    annotation_scores,
    concept_labels,
    image_classes,
    unreadable_images,
)
from clipprobe.concepts.classes import FOLDERS, read_image_classes
from clipprobe.concepts.label_quality import (
    label_quality,
    quality_metrics,
    quality_text,
    with_truth,
)
from clipprobe.concepts.parquet import write_table
from clipprobe.concepts.pool import list_images, pool_fingerprint
from clipprobe.concepts.scoring import PRECISIONS, ClipScorer, score_pool
from clipprobe.concepts.sheets import write_contact_sheets
from clipprobe.concepts.splits import NEGATIVES_MATCHING, select_splits, split_sizes, write_splits
from clipprobe.concepts.vocabulary import DEFAULT_PROMPT, check_prompt, load_vocabulary

log = logging.getLogger(__name__)
SCALE_NOTE = "softmax over the group's concepts of logit_scale * cosine(image, prompt)"
# The concept world's classes (what its backbone is trained on): each split row's image_class.
WORLD_CLASS_COLUMN = "shape"


def _default(fn, name: str):
    """The library's default for a parameter, so the CLI never keeps a second copy."""
    return inspect.signature(fn).parameters[name].default


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLIPPROBE_CACHE_DIR", Path.home() / ".cache" / "clipprobe"))


def _resolve_pool(pool: str | None, truth: str | None) -> tuple[Path, Path | None, Path | None, bool]:
    """(pool, labels table, labels root, on the concept world) from the options or the latest world run."""
    from clipprobe.tracking import runs

    if pool is None:
        run = runs.find_latest_run("world")
        if run is None or runs.WORLD_ROOT_TAG not in run.data.tags:
            raise click.UsageError("no --pool given and no finished world run found: pass --pool DIR or run `clipprobe world` first")
        root = Path(run.data.tags[runs.WORLD_ROOT_TAG])
        truth_path = Path(truth) if truth else root / "truth.parquet"
        log.info("pool from world run %s: %s", run.info.run_id, root / "pool")
        return root / "pool", truth_path, truth_path.parent, True
    if truth is None:
        return Path(pool), None, None, False
    import pyarrow.parquet as pq

    kind = (pq.read_schema(truth).metadata or {}).get(b"clipprobe.kind", b"").decode()
    return Path(pool), Path(truth), Path(truth).parent, kind == "world_truth"


def _world_clip(world_root: Path) -> tuple[str, str] | None:
    """(architecture, weights file) of the latest finished clip run trained on ``world_root``, if its file exists."""
    from clipprobe.tracking import runs

    run = runs.find_latest_run("clip")
    if run is None or run.data.params.get("world") != str(world_root):
        return None
    weights = run.data.tags.get("clipprobe.clip_weights", "")
    return (run.data.tags["clipprobe.clip_model"], weights) if weights and Path(weights).is_file() else None


@click.command()
@click.option("--pool", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of images, searched recursively. Default: the pool of the latest world run.")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labels table (path + label columns, e.g. the world's truth.parquet); paths relative to "
              "its folder. Default: the world's truth when the pool is the world's.")
@click.option("--class-labels", default=None,
              help="Each pool image's class (the class control task, --negatives-matching class): ImageNet's "
              "LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt (a meta.mat beside it gives "
              f"WordNet ids), or '{FOLDERS}' for class subfolders (ImageFolder layout).")
@click.option("--source", type=click.Choice(["clip", "annotations"]), default="clip", show_default=True,
              help="Score images with CLIP, or take positives from the --truth labels.")
@click.option("--clip-model", default="ViT-B-32", show_default=True,
              help="open_clip architecture name, or hf-hub:org/repo. On the concept world, with no CLIP option "
              "given: the CLIP the latest `clip` run trained on it.")
@click.option("--clip-pretrained", default="openai", show_default=True,
              help="open_clip pretrained tag (ignored for hf-hub: names).")
@click.option("--clip-weights", type=click.Path(dir_okay=False), default=None,
              help="Local CLIP weights file, replaces --clip-pretrained: a state dict, an open_clip training "
              "checkpoint (epoch_N.pt), OpenAI's TorchScript archive (ViT-B-32.pt) or .safetensors.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16 on CPU or fp16 on GPU halve memory and time.")
@click.option("--batch-size", type=int, default=_default(score_pool, "batch_size"), show_default=True)
@click.option("--num-workers", type=int, default=_default(score_pool, "num_workers"), show_default=True,
              help="DataLoader processes decoding images while the model runs.")
@click.option("--chunk-size", type=int, default=_default(score_pool, "chunk_size"), show_default=True,
              help="Images per written chunk of scores; an interrupted run resumes from the last chunk.")
@click.option("--top-k", type=int, default=_default(select_splits, "top_k"), show_default=True,
              help="Positives per concept: the top-k images by probability.")
@click.option("--negatives", type=int, default=_default(select_splits, "negatives"), show_default=True,
              help="Random negatives per concept, drawn outside its positives.")
@click.option("--negatives-matching", type=click.Choice(NEGATIVES_MATCHING),
              default=_default(select_splits, "negatives_matching"), show_default=True,
              help="class: draw negatives with the positives' class distribution where the pool allows "
              "(a striped probe must not just find zebras); needs image classes.")
@click.option("--test-fraction", type=float, default=_default(select_splits, "test_fraction"), show_default=True,
              help="Share of each class stored as the test part (stratified).")
@click.option("--seed", type=int, default=_default(select_splits, "seed"), show_default=True)
@click.option("--vocabulary", default=None,
              help="Concept groups: seed, world or a TOML file. Default: world on the concept world, else seed.")
@click.option("--prompt", default=DEFAULT_PROMPT, show_default=True, help="Prompt template with {concept}.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where score chunks are kept for resuming. Default: $CLIPPROBE_CACHE_DIR or ~/.cache/clipprobe.")
@options.device
@options.experiment_name
def concepts(pool, truth, class_labels, source, clip_model, clip_pretrained, clip_weights, precision,
             batch_size, num_workers, chunk_size, top_k, negatives, negatives_matching, test_fraction, seed,
             vocabulary, prompt, cache_dir, device, experiment_name) -> None:
    """Concept datasets: per concept the top-k images as positives, random negatives, a stored test part.

    Logs concepts/scores.parquet, concepts/splits.parquet (also as MLflow dataset inputs), a contact
    sheet per concept, split sizes, and the precision of CLIP's positives when ground truth exists.
    """
    from clipprobe.devices import resolve_device
    from clipprobe.tracking import datasets, runs

    pool_root, truth_path, labels_root, on_world = _resolve_pool(pool, truth)
    pool_root = pool_root.resolve()
    try:
        vocab = load_vocabulary(vocabulary or ("world" if on_world else "seed"))
        check_prompt(prompt)
        if source == "annotations" and truth_path is None:
            raise click.UsageError("--source annotations needs a labels table: pass --truth FILE")
        paths = list_images(pool_root)
        if batch_size < 1 or chunk_size < 1 or num_workers < 0:
            raise ValueError(f"batch size and chunk size must be >= 1 and workers >= 0, got "
                             f"{batch_size}, {chunk_size}, {num_workers}")
        labels = classes = None
        if truth_path is not None:
            import pandas as pd

            truth_table = pd.read_parquet(truth_path)
            labels = concept_labels(truth_table, vocab, labels_root=labels_root, pool_root=pool_root)
            labels = labels[labels["path"].isin(set(paths))].reset_index(drop=True)
            if on_world:
                classes = image_classes(truth_table, WORLD_CLASS_COLUMN, labels_root=labels_root,
                                        pool_root=pool_root)
        class_kind = WORLD_CLASS_COLUMN if classes is not None else None
        if class_labels:
            found = read_image_classes(class_labels, paths)
            classes, class_kind = found.classes, found.kind
            log.info("image classes from %s: %d of %d images, %d classes", found.source, found.n_known,
                     len(paths), classes.nunique())
        if negatives_matching == "class" and classes is None:
            raise ValueError("--negatives-matching class needs each image's class: pass --class-labels "
                             f"FILE (LOC_val_solution.csv, ILSVRC2012_validation_ground_truth.txt) or {FOLDERS}")
        scorer = None
        if source == "clip":
            ctx = click.get_current_context()
            untouched = all(ctx.get_parameter_source(p) == click.core.ParameterSource.DEFAULT
                            for p in ("clip_model", "clip_pretrained", "clip_weights"))
            found = _world_clip(pool_root.parent) if on_world and untouched else None
            if found is not None:  # the CLIP the clip step trained on this world, not a download
                clip_model, clip_weights = found
                log.info("CLIP of the latest clip run on this world: %s, %s", clip_model, clip_weights)
            scorer = ClipScorer.create(clip_model, clip_weights or clip_pretrained,
                                       device=resolve_device(device), precision=precision)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from None
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None

    fingerprint = pool_fingerprint(pool_root, paths)
    meta = {"source": source, "vocabulary": vocab.to_dict(), "vocabulary_file": vocab.source,
            "vocabulary_fingerprint": vocab.fingerprint(), "prompt": prompt, "pool_root": str(pool_root),
            "pool_fingerprint": fingerprint, "n_pool_images": len(paths), "seed": seed}
    if scorer is not None:
        meta.update(scorer.provenance(), probability=SCALE_NOTE)
    params = {"source": source, "pool": str(pool_root), "truth": truth_path, "vocabulary": vocab.source,
              "prompt": prompt, "top_k": top_k, "negatives": negatives, "test_fraction": test_fraction,
              "seed": seed, "pool_fingerprint": fingerprint, "negatives_matching": negatives_matching,
              "class_labels": str(Path(class_labels).resolve()) if class_labels and class_labels != FOLDERS
              else class_labels}
    if scorer is not None:
        params.update(clip_model=clip_model, clip_pretrained=meta["clip_pretrained"],
                      clip_weights_sha256=scorer.weights_sha256, clip_weights_form=scorer.weights_form,
                      precision=precision,
                      logit_scale=round(scorer.logit_scale, 4), batch_size=batch_size, num_workers=num_workers)

    tags = {"clipprobe.pool_root": str(pool_root)}
    if scorer is not None:
        tags.update({"clipprobe.clip_weights_form": scorer.weights_form,
                     "clipprobe.clip_weights_sha256": scorer.weights_sha256 or ""})
    with runs.step_run("concepts", experiment_name=experiment_name, params=params, tags=tags) as run, \
            tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "concepts"
        unreadable: list[str] = []
        try:
            if scorer is not None:
                key = {**scorer.provenance(), "prompt": prompt, "vocabulary": vocab.to_dict(),
                       "pool_fingerprint": fingerprint, "pool_root": str(pool_root)}
                digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
                chunk_dir = Path(cache_dir or default_cache_dir()) / "scores" / digest
                scored = score_pool(scorer, pool_root, paths, vocab, prompt, chunk_dir=chunk_dir,
                                    batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size,
                                    resume_key=key)
                scores, unreadable = scored.scores, scored.unreadable
                if scored.images_scored_now and scored.seconds > 0:
                    runs.log_metrics({"images_per_second": scored.images_scored_now / scored.seconds})
                known = None
            else:
                unreadable = unreadable_images(pool_root, labels["path"])
                if unreadable:
                    log.warning("%d unreadable image(s) skipped, e.g. %s", len(unreadable), unreadable[0])
                known = labels[~labels["path"].isin(set(unreadable))].reset_index(drop=True)
                scores = annotation_scores(known, vocab, top_k)
            table = select_splits(scores, vocab, top_k=top_k, negatives=negatives,
                                  test_fraction=test_fraction, seed=seed, known_labels=known,
                                  image_classes=classes, negatives_matching=negatives_matching)
            quality = None
            if labels is not None:  # the truth beside each mined label, and how often they agree
                table = with_truth(table, labels)
                quality = label_quality(table)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        sizes = split_sizes(table)
        split_meta = {**meta, "top_k": top_k, "negatives": negatives, "test_fraction": test_fraction,
                      "negatives_matching": negatives_matching, "image_class_column": class_kind,
                      "class_labels": params["class_labels"],
                      "sizes": sizes.to_dict(orient="index")}
        write_table(scores, out / "scores.parquet", {**meta, "n_unreadable": len(unreadable)})
        write_splits(table, out / "splits.parquet", split_meta)
        if quality is not None:
            write_table(quality, out / "label_quality.parquet", {"source": source, "prompt": prompt})
        write_contact_sheets(table, pool_root, out / "contact_sheets")
        if unreadable:
            (out / "unreadable.txt").write_text("\n".join(unreadable) + "\n")
        runs.log_artifacts(out, "concepts")
        for name, df in (("scores", scores), ("splits", table)):
            datasets.log_dataset_input(df, name=f"concepts-{name}", context=f"concepts.{name}",
                                       artifact_path=f"concepts/{name}.parquet")
        metrics = {"n_pool_images": len(paths), "n_unreadable": len(unreadable), "n_scored": len(scores)}
        for concept, row in sizes.iterrows():
            metrics.update({f"{k}.{concept}": v for k, v in row.items()})
        if scorer is not None and quality is not None:  # annotation labels are the truth: nothing to measure
            metrics.update(quality_metrics(quality))
        runs.log_metrics(metrics)
    click.echo(sizes.to_string())
    if scorer is not None and quality is not None:
        click.echo("CLIP's labels against the truth (precision of the top-k positives, of the negatives; "
                   "share of test labels that are right):")
        click.echo(quality_text(quality))
    if unreadable:
        click.echo(f"{len(unreadable)} unreadable image(s) skipped (listed in concepts/unreadable.txt)")
    click.echo(f"concept splits of {len(paths)} images logged to run {run.info.run_id}")
