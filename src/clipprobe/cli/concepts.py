"""`clipprobe concepts`: score an image pool with CLIP (or take known labels), pick per-concept splits, log them."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import click

from clipprobe.cli import options
from clipprobe.concepts.config import (
    CLIP_PRECISIONS,
    FOLDERS,
    NEGATIVES_MATCHING,
    SOURCES,
    ConceptsConfig,
)

_D = ConceptsConfig()

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
@click.option("--precision", type=click.Choice(CLIP_PRECISIONS), default=_D.precision, show_default=True,
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
@options.cache_dir("scores", "Where CLIP's score chunks are kept for resuming.")
@options.device
@options.experiment_name
@click.pass_context
def concepts(ctx: click.Context, cache_dir: str | None, device: str, experiment_name: str | None,
             **_settings: Any) -> None:
    """Concept datasets: per concept the top-k images as positives, random negatives, a stored test part.

    Logs concepts/scores.parquet, concepts/splits.parquet (also as MLflow dataset inputs), a contact
    sheet per concept, split sizes, and the precision of CLIP's positives when ground truth exists.
    """
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import concepts as step

    given = options.given(ctx, [f.name for f in fields(ConceptsConfig)])
    with usage_errors():  # a bad setting, no world, a missing file: one line, before a run exists
        config = ConceptsConfig(**given)
        resolved = step.resolve(config, clip_given=any(n in given for n in step.CLIP_OPTIONS),
                                experiment_name=experiment_name, device=device)
    done = step.run(resolved, cache_dir=cache_dir, experiment_name=experiment_name)
    click.echo("\n".join(step.summary(done, resolved)))
