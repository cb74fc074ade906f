"""`clipprobe neurons`: unit scores of every checkpoint of a probe sweep, from its activation cache."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import click

from clipprobe.cli import options
from clipprobe.neurons.config import POOLINGS, NeuronsConfig

_D = NeuronsConfig()


@click.command()
@click.option("--sweep", "sweep_run", default=None, metavar="RUN_ID",
              help="The probe sweep to score. Default: the experiment's latest finished probe sweep.")
@click.option("--epochs", type=options.Epochs(), default="all", show_default=True,
              help="all (the sweep's), a list (0,2,5) or a range (0-3).")
@click.option("--modules", type=options.Names(), default="all", show_default=True,
              help="all (the sweep's), or a list of display names (module:0,module:7) or paths (features.7).")
@click.option("--concepts", type=options.Names(), default="all", show_default=True,
              help="all (the sweep's), or a list of its concepts.")
@click.option("--pooling", type=click.Choice(POOLINGS), default=_D.pooling, show_default=True,
              help="How a unit's map becomes one value per image for AUROC and soft-WPMI (max needs cached maps).")
@click.option("--ks", type=options.Names(), default=",".join(map(str, _D.ks)), show_default=True,
              help="Unit counts of the sparse probes (all units are always probed too).")
@options.cache_dir("activations", "The sweep's activation cache (a checkpoint missing there gets one forward pass).")
@options.device
@options.experiment_name
@click.pass_context
def neurons(ctx: click.Context, cache_dir: str | None, device: str, experiment_name: str | None, **_settings: Any) -> None:
    """Score every unit of every probed module and checkpoint of a sweep against its concepts: AUROC with the
    Mann-Whitney p and BH q (INVERT), soft-WPMI labels (CLIP-Dissect), IoU where masks exist (NetDissect), and
    sparse probes on the k top units (Gurnee et al.). The sweep run gets neurons/units.parquet,
    neurons/sparse.parquet and neurons/summary.parquet; each checkpoint run neurons/<module>/<concept>/* metrics.
    A checkpoint already scored is skipped, so an interrupted run goes on where it stopped."""
    from clipprobe.cli.failures import usage_errors
    from clipprobe.steps import neurons as step

    given = options.given(ctx, [f.name for f in fields(NeuronsConfig)])
    if "ks" in given:
        given["ks"] = tuple(int(k) for k in given["ks"] or ())
    with usage_errors():
        config = NeuronsConfig(**given)
        inputs = step.resolve(config, experiment_name=experiment_name, device=device)
    click.echo(inputs.describe())
    done = step.run(inputs, cache_dir=cache_dir, device=device, say=click.echo)
    click.echo(f"unit scores of sweep {done.sweep_run}: {len(done.scored)} checkpoints scored in {done.seconds:.1f} s "
               f"({len(done.skipped)} done before); {done.rows.get('units', 0):,} unit rows in neurons/units.parquet")
