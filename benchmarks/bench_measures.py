"""What MDL (online codelength per fit) and CKA (between modules and epochs) add to a probe sweep.

A sweep over C random-init MobileNetV2 checkpoints (width 0.5, 10 classes, the demo's backbone; different
seeds stand in for epochs) on the concept world at 64 px, 19 modules, the seed's three probe kinds, two fit
settings: the sweep's defaults (repeats 3, permutations 19) and the demo's (repeats 1, permutations 0).
Per setting: every checkpoint's forward pass into a cold activation cache (timed), then, interleaved, the fits
with ``mdl=False`` and with ``mdl=True`` (both on the cached activations) and CKA from the cached pooled
activations. Overheads are against the whole sweep without either (forward passes + fits without MDL; no
MLflow logging: the logged sweep is longer, so these shares are upper bounds). Each timing is the fastest of
``--rounds``. The table is rewritten after each setting.

Writes benchmarks/results/bench_measures[_small].md.
Usage: python benchmarks/bench_measures.py [--small] [--rounds 2] [--checkpoints 3] [--workdir .cache/bench_measures]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import FULL, SMALL, make_world  # noqa: E402 - the sibling benchmark's concept world

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"demo (repeats 1, permutations 0)": (1, 0), "sweep defaults (repeats 3, permutations 19)": (3, 19)}


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="3 concepts x 120 images (else 9 x 300 at 64 px)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--workdir", default=".cache/bench_measures")
    parser.add_argument("--settings", default="demo,defaults", help="which fit settings, in this order")
    args = parser.parse_args()
    cfg = dict(SMALL if args.small else {**FULL, "size": 64, "pool": 3600})
    workdir = Path(args.workdir)

    from clipprobe.backbones.architectures import ImageTransform, build_model, default_probe_modules
    from clipprobe.backbones.checkpoints import fingerprint
    from clipprobe.backbones.loader import Backbone
    from clipprobe.similarity.checkpoints import sweep_cka
    from clipprobe.sweep.plan import DEFAULT_PROBES, CheckpointRef, Sweep, SweepPlan

    splits = make_world(workdir, cfg)
    transform = ImageTransform(resize_size=cfg["size"], crop_size=cfg["size"])
    refs = []
    for epoch in range(args.checkpoints):
        torch.manual_seed(epoch)
        model = build_model("mobilenet_v2", num_classes=10, width_mult=0.5).eval()
        backbone = Backbone(model, default_probe_modules(model), transform, fingerprint(model.state_dict()), epoch,
                            "bench", str(epoch + 1), "mobilenet_v2")
        refs.append(CheckpointRef(epoch, backbone.fingerprint, load=lambda b=backbone: b, name="bench",
                                  version=str(epoch + 1)))
    cache_dir = workdir / "cache"
    rows = []
    chosen = [label for label in SETTINGS if any(key in label for key in args.settings.split(","))]
    for label in chosen:
        repeats, permutations = SETTINGS[label]

        def sweep(mdl: bool, repeats: int = repeats, permutations: int = permutations) -> Sweep:
            plan = SweepPlan(concepts=list(cfg["concepts"]), probes=DEFAULT_PROBES, repeats=repeats,
                             permutations=permutations, mdl=mdl)
            return Sweep(splits, plan, cache_dir=cache_dir, progress=False)

        def forward_passes() -> None:  # every checkpoint's activations into the cold cache, as the sweep's pass
            s = sweep(False)
            for ref in refs:
                backbone = ref.backbone()
                s.cache.release(s.activations(backbone, s.modules_of(backbone)))

        shutil.rmtree(cache_dir, ignore_errors=True)
        forward, _ = _timed(forward_passes)
        print(f"{label}: forward passes {forward:.1f} s", flush=True)
        off, on, cka = [], [], []
        for _ in range(args.rounds):
            off.append(_timed(lambda: sweep(False).run(refs))[0])
            t, fitted = _timed(lambda: sweep(True).run(refs))
            on.append(t)
            t, table = _timed(lambda: sweep_cka(sweep(False), refs))
            cka.append(t)
            print(f"{label}: fits without MDL {off[-1]:.1f} s, with {on[-1]:.1f} s, CKA {cka[-1]:.2f} s", flush=True)
        base = forward + min(off)  # the whole sweep without MDL or CKA
        rows.append((label, len(fitted), base, min(off), min(on), min(cka), (min(on) - min(off)) / base,
                     min(cka) / base, int(table["n_images"].iloc[0]), table["module_a"].nunique()))
        write(rows, args, cfg, splits)


def write(rows: list[tuple], args: argparse.Namespace, cfg: dict, splits) -> None:
    from clipprobe.sweep.plan import DEFAULT_PROBES

    n_images = len({p for p in splits.table["path"]})
    load = os.getloadavg()
    lines = [f"# MDL and CKA: what they add to a probe sweep{' (--small)' if args.small else ''}", "",
             f"{args.checkpoints} random-init MobileNetV2 checkpoints (width 0.5, 10 classes: the demo's backbone), "
             f"19 modules, {len(cfg['concepts'])} concepts x {cfg['pos'] + cfg['neg']} images ({cfg['pos']} positives, "
             f"30% test; {n_images} distinct images at {cfg['size']} px), probe kinds {', '.join(DEFAULT_PROBES)}. "
             "Fits timed with activations cached (the same for both); the base is the whole sweep without MDL or "
             "CKA: the forward passes into a cold cache + the fits (no MLflow logging). Fastest of "
             f"{args.rounds} interleaved rounds.",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared by other users), torch {torch.__version__}, "
             f"torch.get_num_threads() {torch.get_num_threads()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
             f"{load[2]:.1f} (1/5/15 min). Command: `python benchmarks/bench_measures.py"
             f"{' --small' if args.small else ''} --rounds {args.rounds} --checkpoints {args.checkpoints} --settings {args.settings}`.", "",
             "| fit setting | fits | whole sweep (forward + fits) s | fits without MDL s | fits with MDL s | CKA s "
             "| MDL adds | CKA adds | CKA images x modules |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, n_fits, cold, off, on, cka, mdl_share, cka_share, n, m in rows:
        lines.append(f"| {label} | {n_fits} | {cold:.1f} | {off:.1f} | {on:.1f} | {cka:.2f} | {mdl_share:+.0%} "
                     f"| {cka_share:+.1%} | {n} x {m} |")
    lines += ["", "MDL adds = (fits with MDL - fits without) / whole sweep; CKA adds = CKA / whole sweep. "
              "Both are on by default only where each adds at most 15% (issue 23)."]
    out = RESULTS / f"bench_measures{'_small' if args.small else ''}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
