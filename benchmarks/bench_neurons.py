"""Benchmark unit scoring (neurons) against the probe sweep of the same checkpoint, side by side in one process.

Seed sizes (default): bench_sweep's world (2,700 concept-world images at 224x224, 9 concepts x 300 images,
19 modules of a random-init MobileNetV2) and its sweep plan (3 probe kinds, stored split + one shuffled-label
fit per concept). Times one checkpoint's sweep (extraction + probes, no tracking) and then the unit scores of
that checkpoint from the activations the sweep cached (AUROC + p + q, soft-WPMI from the truth, sparse probes;
no IoU: no masks in this world yet). ``--small``: toy sizes.

Writes benchmarks/results/bench_neurons[_small].md.
Usage: python benchmarks/bench_neurons.py [--small] [--workdir .cache/bench_sweep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import FULL, SMALL, make_world  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="toy sizes")
    parser.add_argument("--workdir", default=".cache/bench_sweep", help="world and caches (bench_sweep's world is reused)")
    parser.add_argument("--out", default=None, help="Markdown file (default benchmarks/results/bench_neurons[_small].md)")
    args = parser.parse_args()
    cfg = SMALL if args.small else FULL
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)

    from clipprobe.backbones.architectures import ImageTransform, build_model, default_probe_modules
    from clipprobe.backbones.checkpoints import fingerprint
    from clipprobe.backbones.loader import Backbone
    from clipprobe.neurons.score import UnitInputs, score_checkpoint
    from clipprobe.neurons.wpmi import truth_probabilities
    from clipprobe.sweep.plan import DEFAULT_PROBES, CheckpointRef, Sweep, SweepPlan

    splits = make_world(workdir, cfg)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=1000).eval()
    modules = default_probe_modules(model)
    transform = ImageTransform(resize_size=cfg["size"], crop_size=cfg["size"])
    backbone = Backbone(model, modules, transform, fingerprint(model.state_dict()), 0, "bench", "1", "mobilenet_v2")
    ref = CheckpointRef(0, backbone.fingerprint, load=lambda: backbone, name="bench", version="1")
    cache_dir = workdir / ("neurons-cache-small" if args.small else "neurons-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    plan = SweepPlan(concepts=list(cfg["concepts"]), probes=DEFAULT_PROBES, permutations=1)
    sweep = Sweep(splits, plan, cache_dir=cache_dir, progress=False)
    t0 = time.perf_counter()
    images = sweep.images(transform)
    t_decode = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    acts = sweep.activations(backbone, modules)
    t_extract, c_extract = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    rows = sweep.run_checkpoint(ref)  # extraction read back from the cache (well under a second) + every probe
    t_probes, c_probes = time.perf_counter() - t0, time.process_time() - c0

    # unit scores from the sweep's cached activations
    concepts = [t.concept for t in sweep.tasks]
    truth = np.zeros((len(images), len(concepts)), int)
    for c, task in enumerate(sweep.tasks):
        truth[np.asarray(task.rows)[task.labels == 1], c] = 1
    inputs = UnitInputs(sweep.tasks, sweep.groups, truth_probabilities(truth), concepts, "truth")
    acts = sweep.activations(backbone, modules)
    full = {(r["module"], r["concept"]): (round(r["test_acc"] * r["n_test"]), r["n_test"])
            for r in rows if r["probe"] == "linear_gap"}
    t0, c0 = time.perf_counter(), time.process_time()
    tables = score_checkpoint(0, modules, acts.gap, inputs, full=full)
    t_units, c_units = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    refit = score_checkpoint(0, modules, acts.gap, inputs)
    t_refit, c_refit = time.perf_counter() - t0, time.process_time() - c0
    sweep.cache.release(acts)
    same = bool((refit.summary["full_test_acc"].to_numpy() == tables.summary["full_test_acc"].to_numpy()).all())

    sweep_checkpoint, cpu_checkpoint = t_extract + t_probes, c_extract + c_probes
    n_units = int(tables.summary.groupby("module")["n_units"].first().sum())
    lines = [
        f"# Unit scores vs the probe sweep, one checkpoint ({'toy' if args.small else 'seed'} sizes)",
        "",
        f"Random-init MobileNetV2 (1000 classes), {len(modules)} modules ({n_units} units), {len(images)} "
        f"concept-world images at {cfg['size']}x{cfg['size']}, {len(concepts)} concepts x {cfg['pos'] + cfg['neg']} "
        f"images ({cfg['pos']} positives, 30% test); sweep: probe kinds {', '.join(plan.probes)}, stored split + "
        f"one shuffled-label fit per concept ({len(rows)} fits), no tracking. Unit scores: AUROC + exact/asymptotic "
        f"Mann-Whitney p + BH q, soft-WPMI (p from the truth), sparse probes k = 1, 2, 4, 8, 16, 32, all "
        f"({len(tables.units):,} unit rows, {len(tables.sparse)} sparse rows); no IoU (the world has no masks here).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other sessions; load average "
        f"{os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Command: `python benchmarks/bench_neurons.py{' --small' if args.small else ''}`.",
        "",
        "| part | wall s | CPU s (this process) | share of the checkpoint's sweep (wall / CPU) |",
        "|---|---:|---:|---:|",
        f"| decode + transform images (once per sweep) | {t_decode:.1f} | | |",
        f"| sweep: extraction (one hooked pass, all modules) | {t_extract:.1f} | {c_extract:.1f} | |",
        f"| sweep: probes (every fit of the checkpoint) | {t_probes:.1f} | {c_probes:.1f} | |",
        f"| **sweep of the checkpoint** (extraction + probes) | **{sweep_checkpoint:.1f}** | **{cpu_checkpoint:.1f}** "
        "| 100% |",
        f"| **unit scores of the checkpoint** (from the cache; k = all read from the sweep's linear_gap fits, as "
        f"`neurons` does) | **{t_units:.1f}** | **{c_units:.1f}** | **{100 * t_units / sweep_checkpoint:.1f}% / "
        f"{100 * c_units / cpu_checkpoint:.1f}%** |",
        f"| unit scores refitting k = all themselves (no sweep results) | {t_refit:.1f} | {c_refit:.1f} | "
        f"{100 * t_refit / sweep_checkpoint:.1f}% / {100 * c_refit / cpu_checkpoint:.1f}% |",
        "",
        f"- k = all refitted equals the sweep's linear_gap accuracy in every (module, concept): {same}.",
        "- CPU seconds count this process's threads (the probes run several), so they are less bent by the "
        "other sessions' load than wall seconds.",
        "",
    ]
    out = Path(args.out) if args.out else RESULTS / f"bench_neurons{'_small' if args.small else ''}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
