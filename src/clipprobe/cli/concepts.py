"""`clipprobe concepts`: score an image pool with CLIP (or take known labels), pick per-concept splits, log them."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import click

from clipprobe.cli import options
from clipprobe.concepts.build import SOURCES, ConceptsConfig
from clipprobe.concepts.classes import FOLDERS
from clipprobe.concepts.scoring import PRECISIONS
from clipprobe.concepts.splits import NEGATIVES_MATCHING

log = logging.getLogger(__name__)
_D = ConceptsConfig  # a dataclass's class attributes are its defaults
_CLIP_OPTIONS = ("clip_model", "clip_pretrained", "clip_weights")


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
@click.option("--source", type=click.Choice(SOURCES), default=_D.source, show_default=True,
              help="Score images with CLIP, or take positives from the --truth labels.")
@click.option("--clip-model", default=_D.clip_model, show_default=True,
              help="open_clip architecture name, or hf-hub:org/repo. On the concept world, with no CLIP option "
              "given: the CLIP the latest `clip` run trained on it.")
@click.option("--clip-pretrained", default=_D.clip_pretrained, show_default=True,
              help="open_clip pretrained tag (ignored for hf-hub: names).")
@click.option("--clip-weights", type=click.Path(dir_okay=False), default=None,
              help="Local CLIP weights file, replaces --clip-pretrained: a state dict, an open_clip training "
              "checkpoint (epoch_N.pt), OpenAI's TorchScript archive (ViT-B-32.pt) or .safetensors.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_D.precision, show_default=True,
              help="bf16 on CPU or fp16 on GPU halve memory and time.")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True,
              help="Images per CLIP forward batch (--source clip).")
@click.option("--num-workers", type=int, default=_D.num_workers, show_default=True,
              help="DataLoader processes decoding images while the model runs.")
@click.option("--chunk-size", type=int, default=_D.chunk_size, show_default=True,
              help="Images per written chunk of scores; an interrupted run resumes from the last chunk.")
@click.option("--top-k", type=int, default=_D.top_k, show_default=True,
              help="Positives per concept: the top-k images by probability.")
@click.option("--negatives", type=int, default=_D.negatives, show_default=True,
              help="Random negatives per concept, drawn outside its positives.")
@click.option("--negatives-matching", type=click.Choice(NEGATIVES_MATCHING),
              default=_D.negatives_matching, show_default=True,
              help="class: draw negatives with the positives' class distribution where the pool allows "
              "(a striped probe must not just find zebras); needs image classes.")
@click.option("--test-fraction", type=float, default=_D.test_fraction, show_default=True,
              help="Share of each class stored as the test part (stratified).")
@click.option("--seed", type=int, default=_D.seed, show_default=True,
              help="Seeds the negatives' draw, ties among positives and the train/test split (per concept).")
@click.option("--vocabulary", default=None,
              help="Concept groups: seed, world or a TOML file. Default: world on the concept world, else seed.")
@click.option("--prompt", default=_D.prompt, show_default=True, help="Prompt template with {concept}.")
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
    from clipprobe.cli.failures import usage_errors
    from clipprobe.concepts import build
    from clipprobe.concepts.label_quality import quality_text
    from clipprobe.core.devices import resolve_device
    from clipprobe.tracking import configs, datasets, discovery, runs

    if pool is None:  # the latest world's pool, with its truth
        with usage_errors():
            world = discovery.require_world_root("--pool")
        pool, truth = world[0] / "pool", truth or world[0] / "truth.parquet"
        log.info("pool from world run %s: %s", world[1], pool)
    ctx = click.get_current_context()
    untouched = all(ctx.get_parameter_source(p) == click.core.ParameterSource.DEFAULT for p in _CLIP_OPTIONS)
    with usage_errors():
        config = ConceptsConfig(
            pool=pool, truth=truth and Path(truth), class_labels=class_labels, source=source, clip_model=clip_model,
            clip_pretrained=clip_pretrained, clip_weights=clip_weights and Path(clip_weights), precision=precision,
            batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size, top_k=top_k, negatives=negatives,
            negatives_matching=negatives_matching, test_fraction=test_fraction, seed=seed, vocabulary=vocabulary,
            prompt=prompt).resolved()
        found = discovery.latest_world_clip(config.pool.parent) if source == "clip" and config.on_world \
            and untouched else None
        if found is not None:  # the CLIP the clip step trained on this world, not a download
            config = config.replace(clip_model=found[0], clip_weights=found[1])
            log.info("CLIP of the latest clip run on this world: %s, %s", *found)
        inputs = build.read_inputs(config)
        try:
            scorer = build.create_scorer(config, resolve_device(device))
        except RuntimeError as err:  # weights that cannot be fetched or loaded
            raise click.ClickException(str(err)) from None

    tags = {"clipprobe.pool_root": str(config.pool)}
    if scorer is not None:
        tags.update({"clipprobe.clip_weights_form": scorer.weights_form,
                     "clipprobe.clip_weights_sha256": scorer.weights_sha256 or ""})
    with runs.step_run("concepts", experiment_name=experiment_name, params=build.run_params(config, inputs, scorer),
                       tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        configs.log_config(config)
        try:
            made = build.make_concepts(config, inputs, scorer, cache_dir=cache_dir)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        out = Path(tmp) / "concepts"
        made.write(out, config.pool)
        runs.log_artifacts(out, "concepts")
        for name, df in (("scores", made.scores), ("splits", made.splits)):
            datasets.log_dataset_input(df, name=f"concepts-{name}", context=f"concepts.{name}",
                                       artifact_path=f"concepts/{name}.parquet")
        if made.images_per_second is not None:
            runs.log_metrics({"images_per_second": made.images_per_second})
        runs.log_metrics(made.metrics())
    click.echo(made.sizes.to_string())
    if made.clip_quality is not None:
        click.echo("CLIP's labels against the truth (precision of the top-k positives, of the negatives; "
                   "share of test labels that are right):")
        click.echo(quality_text(made.clip_quality))
    if made.unreadable:
        click.echo(f"{len(made.unreadable)} unreadable image(s) skipped (listed in concepts/unreadable.txt)")
    click.echo(f"concept splits of {len(inputs.paths)} images logged to run {run.info.run_id}")
