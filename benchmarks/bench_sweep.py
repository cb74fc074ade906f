"""Benchmark the probe sweep on one random-init MobileNetV2 checkpoint, end to end and part by part,
each part against a naive reference measured in the same run.

Seed sizes (default, the project's goal workload): 2,700 distinct concept-world images at 224x224,
19 modules, 9 concepts x 300 images of their own (100 positives, 200 negatives, 30% test), 3 probe
kinds, the stored split + a shuffled-label control per concept (``--repeats R`` adds R re-splits).
``--small`` runs the same code at toy sizes in about a minute. After the timings, the probe part is
run again on the exact path (fp32 forward, float32 Gram products) to check the fast defaults'
accuracies; ``--no-exact-check`` skips that.

Writes benchmarks/results/bench_sweep[_r{R}][_small].md (_r{R} only when R != 0).
Usage: python benchmarks/bench_sweep.py [--small] [--repeats R] [--no-exact-check] [--workdir .cache/bench_sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = logging.getLogger("bench_sweep")
RESULTS = Path(__file__).resolve().parent / "results"
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
PATTERNS = ("dotted", "striped", "zigzagged")

# The pool is larger than the images used so that every concept finds its positives among the images
# the concepts before it left over (a colour is on 1/7 of the images, a pattern on 1/4).
FULL = dict(size=224, pool=3600, concepts=COLOURS + PATTERNS, pos=100, neg=200,
            naive_images=24, naive_mlp_fits=12, naive_explicit_steps=3, logging_runs=300, fluent_runs=30)
SMALL = dict(size=64, pool=600, concepts=("red", "blue", "dotted"), pos=40, neg=80,
             naive_images=16, naive_mlp_fits=6, naive_explicit_steps=3, logging_runs=100, fluent_runs=10)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def make_world(workdir: Path, cfg: dict):
    """The concept world's pool and seed-like splits built from its ground truth (no CLIP needed).

    Concept by concept, positives (have the concept) and negatives (lack it) are drawn from the images
    no earlier concept took, so the concepts' image sets are disjoint: 9 x 300 = 2,700 distinct images.
    """
    from clipprobe.concepts.splits import ConceptSplits, stratified_parts
    from clipprobe.world.config import WorldSpec
    from clipprobe.world.generate import generate_world, read_truth

    root = workdir / f"world-{cfg['size']}-{cfg['pool']}"
    if not (root / "truth.parquet").is_file():
        if root.exists():
            shutil.rmtree(root)
        generate_world(root, WorldSpec(size=cfg["size"], train_per_class=0, val_per_class=0, pool_size=cfg["pool"]),
                       progress=True)
    truth = read_truth(root / "truth.parquet")[0].to_pandas()
    truth["path"] = [Path(p).relative_to("pool").as_posix() for p in truth["path"]]
    frames = []
    free = np.ones(len(truth), bool)
    for i, concept in enumerate(cfg["concepts"]):
        rng = np.random.default_rng([0, i])
        has = ((truth["colour"] == concept) | (truth["pattern"] == concept)).to_numpy()
        picked = []
        for want, n in ((has, cfg["pos"]), (~has, cfg["neg"])):
            left = np.flatnonzero(want & free)
            if len(left) < n:
                raise ValueError(f"concept {concept!r}: {len(left)} unused {'positive' if want is has else 'negative'} "
                                 f"images left in a pool of {cfg['pool']}, need {n}: raise the pool size")
            picked.append(rng.choice(left, n, replace=False))
            free[picked[-1]] = False
        pos, neg = picked
        labels = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
        frames.append(pd.DataFrame({
            "concept": concept, "group": "colours" if concept in COLOURS else "patterns",
            "path": truth["path"].to_numpy()[np.r_[pos, neg]], "rank": np.arange(1, len(labels) + 1),
            "probability": labels.astype(float), "label": labels, "part": stratified_parts(labels, 0.3, rng),
        }))
    return ConceptSplits(pd.concat(frames, ignore_index=True), {"pool_root": str(root / "pool")})


def naive_extraction(model, modules: dict[str, str], pixels: np.ndarray, n: int) -> float:
    """Seconds per image of 19 truncated fp32 passes (features[:k+1] per module), on n images."""
    x = torch.from_numpy(np.array(pixels[:n]))
    seconds = 0.0
    with torch.inference_mode():
        for path in modules.values():
            k = int(path.split(".")[1])
            t, _ = _timed(lambda k=k: [model.features[: k + 1](x[i:i + 8]) for i in range(0, n, 8)])
            seconds += t
    return seconds / n


def sklearn_linear(X: np.ndarray, tasks, repeats: int, seed: int, weight_decay: float):
    """One LogisticRegression per (concept, split, real/control): seconds and mean real test accuracy per concept."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from clipprobe.probes.evaluation import permutation_labels, resplit

    accs, t0 = {}, time.perf_counter()
    for task in tasks:
        per = []
        for s in range(1 + repeats):
            tr = resplit(task, s, seed)
            Xt = X[task.rows]
            for c, y in enumerate((task.labels, permutation_labels(task, s, seed))):
                scaler = StandardScaler().fit(Xt[tr])
                clf = LogisticRegression(C=1.0 / (weight_decay * tr.sum()), max_iter=1000)
                clf.fit(scaler.transform(Xt[tr]), y[tr])
                if c == 0:
                    per.append(float((clf.predict(scaler.transform(Xt[~tr])) == y[~tr]).mean()))
        accs[task.concept] = float(np.mean(per))
    return time.perf_counter() - t0, accs


def exact_check(ours: list[dict], exact: list[dict]) -> dict[str, np.ndarray]:
    """Per probe kind: |test_acc difference| x n_test, in test images, per (concept, module)."""
    by_key = {(r["concept"], r["module"], r["probe"]): r for r in exact}
    if len(by_key) != len(ours):
        raise AssertionError(f"the exact run fitted {len(by_key)} (concept, module, probe), the timed run {len(ours)}")
    diffs: dict[str, list[float]] = defaultdict(list)
    for r in ours:
        e = by_key[(r["concept"], r["module"], r["probe"])]
        assert e["n_test"] == r["n_test"], "same splits in both runs"
        diffs[r["probe"]].append(abs(r["test_acc"] - e["test_acc"]) * r["n_test"])
    return {k: np.array(v) for k, v in diffs.items()}


def precision_text(options, device) -> str:
    """The forward precision a Sweep used: "fp32", "bf16" or "auto (bf16 here)"."""
    if options.precision != "auto":
        return options.precision
    resolved = options.resolve(device).precision
    return "auto (calibrated per module here)" if resolved == "auto" else "auto (fp32 here)"


def sklearn_mlp_seconds_per_fit(X: np.ndarray, tasks, n_fits: int, params: dict) -> float:
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    for i in range(n_fits):
        task = tasks[i % len(tasks)]
        tr = task.train
        Xt = StandardScaler().fit(X[task.rows][tr]).transform(X[task.rows][tr])
        MLPClassifier(hidden_layer_sizes=(params["hidden"],), solver="sgd", learning_rate_init=params["lr"],
                      momentum=params["momentum"], nesterovs_momentum=False, alpha=params["weight_decay"],
                      batch_size=len(Xt), max_iter=params["steps"], tol=0.0, n_iter_no_change=10**9,
                      shuffle=False, random_state=0).fit(Xt, task.labels[tr])
    return (time.perf_counter() - t0) / n_fits


def explicit_mlp_seconds_per_step(X, task, params: dict, steps: int) -> float:
    """One explicit ReLU MLP on a module's full maps (float32, full batch SGD): seconds per training step."""
    tr = task.train
    Z = torch.from_numpy(np.asarray(X[task.rows[tr]], dtype=np.float32))
    Z = (Z - Z.mean(0)) / Z.std(0).clamp_min(1e-12)
    y = torch.as_tensor(task.labels[tr], dtype=torch.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(Z.shape[1], params["hidden"]), torch.nn.ReLU(),
                              torch.nn.Linear(params["hidden"], 1))
    opt = torch.optim.SGD(net.parameters(), lr=params["lr"], momentum=params["momentum"],
                          weight_decay=params["weight_decay"])
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(Z)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def bench_logging(rows: list[dict], n_fast: int, n_fluent: int) -> tuple[float, float, float]:
    """Nested fit runs per second: the sweep's writer (``submit`` + ``flush``: batched transactions on a
    SQL store), three public MLflow calls per run (``log_fit``), and fluent calls."""
    import mlflow

    from clipprobe.tracking import fits, runs
    from clipprobe.tracking.fit_writer import FitWriter

    with runs.step_run("probe", run_name="logging-bench") as parent:
        logger = FitWriter(parent.info.run_id)
        ckpt = fits.CheckpointRuns(parent.info.run_id).run_id(0)

        def writer():
            for i in range(n_fast):
                logger.submit(ckpt, rows[i % len(rows)])
            logger.flush()

        t_writer, _ = _timed(writer)
        logger.close()
        t_calls, _ = _timed(lambda: [logger.log_fit(ckpt, rows[i % len(rows)]) for i in range(n_fast)])

        def fluent():
            for i in range(n_fluent):
                row = rows[i % len(rows)]
                with mlflow.start_run(nested=True, run_name="fluent"):
                    for c in fits.IDENTITY_COLUMNS:
                        mlflow.log_param(c, row[c])
                    for c in fits.METRIC_COLUMNS:
                        mlflow.log_metric(c, float(row[c]), step=int(row["epoch"]))
                    mlflow.set_tag("clipprobe.level", "fit")

        t_fluent, _ = _timed(fluent)
    return n_fast / t_writer, n_fast / t_calls, n_fluent / t_fluent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="toy sizes, about a minute")
    parser.add_argument("--workdir", default=".cache/bench_sweep", help="world, caches and tracking store")
    parser.add_argument("--repeats", type=int, default=0,
                        help="extra re-splits per concept; 0 = the goal workload (stored split + control)")
    parser.add_argument("--no-exact-check", dest="exact_check", action="store_false",
                        help="skip the accuracy check against the exact path (fp32 forward, float32 products)")
    parser.add_argument("--out", default=None,
                        help="Markdown file (default benchmarks/results/bench_sweep[_r{R}][_small].md)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = SMALL if args.small else FULL
    workdir = Path(args.workdir).resolve() / ("small" if args.small else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.chdir(workdir)  # artifacts of the bench store land here
    torch.set_num_threads(os.cpu_count() or 1)

    import clipprobe.sweep.plan as sweep_mod
    from clipprobe.activations.cache import ActivationCache
    from clipprobe.activations.options import ExtractOptions
    from clipprobe.backbones.architectures import ImageTransform, build_model, default_probe_modules
    from clipprobe.backbones.checkpoints import fingerprint
    from clipprobe.backbones.loader import Backbone
    from clipprobe.probes.design import (
        FAST_PRODUCTS_MIN_FEATURES,
        gram_product_dtype,
    )
    from clipprobe.probes.kinds import probe_kind
    from clipprobe.sweep.plan import DEFAULT_PROBES, CheckpointRef, Sweep, SweepPlan
    from clipprobe.tracking import fits, runs
    from clipprobe.tracking.fit_writer import FitWriter
    from clipprobe.tracking.sweep_fits import SweepFits

    splits = make_world(workdir.parent, cfg)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=1000).eval()
    modules = default_probe_modules(model)
    transform = ImageTransform(resize_size=cfg["size"], crop_size=cfg["size"])
    digest = fingerprint(model.state_dict())
    forwards = {"batches": 0}  # forward passes, counted by a hook of our own
    model.register_forward_pre_hook(lambda module, args: forwards.__setitem__("batches", forwards["batches"] + 1))
    backbone = Backbone(model, modules, transform, digest, 0, "bench", "1", "mobilenet_v2")
    ref = CheckpointRef(0, digest, load=lambda: backbone, name="bench", version="1")
    cache_dir = workdir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    plan = SweepPlan(concepts=list(cfg["concepts"]), probes=DEFAULT_PROBES, repeats=args.repeats,
                     permutations=1)  # the workload: one shuffled-label fit per split

    # ---- the sweep end to end, its parts timed by wrapping the functions it calls
    parts: dict[str, float] = defaultdict(float)
    real_eval, real_get = sweep_mod.evaluate_concepts, ActivationCache.get

    def timed_eval(X, tasks, kind, params, **kw):
        t, out = _timed(lambda: real_eval(X, tasks, kind, params, **kw))
        parts[f"probes {kind.name}"] += t
        return out

    def timed_get(self, *a, **kw):
        t, out = _timed(lambda: real_get(self, *a, **kw))
        parts["extraction"] += t
        return out

    sweep_mod.evaluate_concepts, ActivationCache.get = timed_eval, timed_get
    sweep = Sweep(splits, plan, cache_dir=cache_dir)
    t_decode, images = _timed(lambda: sweep.images(transform))
    n_images = len(images)
    with runs.step_run("probe", run_name="bench sweep") as parent:
        logger, checkpoints = FitWriter(parent.info.run_id), fits.CheckpointRuns(parent.info.run_id)

        def on_fit(row):  # as the CLI does: the background writer logs while the next probes fit
            t, _ = _timed(lambda: logger.submit(checkpoints.run_id(row["epoch"]), row))
            parts["logging"] += t

        def on_checkpoint(r, rows):
            t, _ = _timed(lambda: (logger.flush(), checkpoints.finish(r.epoch, rows)))
            parts["logging"] += t

        batches = forwards["batches"]
        t_sweep, rows = _timed(lambda: sweep.run([ref], on_fit=on_fit, on_checkpoint=on_checkpoint))
        t_close, _ = _timed(logger.close)
        t_results, table = _timed(SweepFits(parent.info.run_id).table)
        t_results += t_close
        t_artifact, _ = _timed(lambda: fits.log_results(parent.info.run_id, table))
        parts["logging"] += t_results + t_artifact
        t_sweep += t_results + t_artifact
    sweep_mod.evaluate_concepts, ActivationCache.get = real_eval, real_get
    assert forwards["batches"] - batches == -(-n_images // sweep.extract.batch_size), "one pass per checkpoint"
    acts = ActivationCache(cache_dir).get(model, modules, images, fingerprint=digest, options=sweep.extract,
                                          progress=False)
    assert forwards["batches"] - batches == -(-n_images // sweep.extract.batch_size), "read from the cache"
    tasks = sweep.tasks
    n_fits = len(rows)
    per_kind = n_fits // len(plan.probes)
    models_per_kind = per_kind * (1 + plan.repeats) * 2

    # ---- naive references
    naive_s_per_img = naive_extraction(model, modules, images.pixels, cfg["naive_images"])
    naive_extract = naive_s_per_img * n_images
    t_sk_lin, sk_acc = 0.0, {}
    lin_params = plan.params_of("linear_gap")
    for name, path in modules.items():
        t, acc = sklearn_linear(acts.gap(path), tasks, plan.repeats, plan.seed, lin_params["weight_decay"])
        t_sk_lin += t
        sk_acc.update({(c, name): a for c, a in acc.items()})
    ours_lin = {(r["concept"], r["module"]): r["test_acc"] for r in rows if r["probe"] == "linear_gap"}
    n_test = np.array([r["n_test"] for r in rows if r["probe"] == "linear_gap"])
    lin_diff = np.array([abs(ours_lin[k] - sk_acc[k]) for k in ours_lin]) * n_test.mean()
    mlp_params = plan.params_of("non_linear_gap")
    sk_mlp_per_fit = np.mean([sklearn_mlp_seconds_per_fit(acts.gap(p), tasks, cfg["naive_mlp_fits"] // 3, mlp_params)
                              for p in ("features.2", "features.9", "features.17")])
    naive_mlp = sk_mlp_per_fit * models_per_kind
    map_params = plan.params_of("non_linear_non_gap")
    per_step = {name: explicit_mlp_seconds_per_step(acts.map(path), tasks[0], map_params, cfg["naive_explicit_steps"])
                for name, path in modules.items()}
    naive_map = sum(per_step.values()) * map_params["steps"] * len(tasks) * (1 + plan.repeats) * 2

    # ---- logging alone, once the kernel has written the activation cache back (its dirty pages throttle
    # every writer, sqlite included, for a while after a 5.6 GB extraction)
    os.sync()
    fast_rate, calls_rate, fluent_rate = bench_logging(rows, cfg["logging_runs"], cfg["fluent_runs"])

    # ---- accuracy of the fast defaults against the exact path (after all timings, timed by none)
    exact_lines = []
    products = gram_product_dtype(torch.device("cpu"), torch.float32, FAST_PRODUCTS_MIN_FEATURES)
    if args.exact_check:
        exact_options = ExtractOptions(precision="fp32")
        exact_cache = workdir / "cache-exact"
        shutil.rmtree(exact_cache, ignore_errors=True)
        exact_sweep = Sweep(splits, dataclasses.replace(plan, fast_gram=False), cache_dir=exact_cache,
                            extract=exact_options)
        # the noise floor: the same exact path with another seed for the MLPs' init (linear probes have none)
        seeded = [p for p in plan.probes if "seed" in probe_kind(p).hparams]
        reseeded = Sweep(splits, SweepPlan(concepts=plan.concepts, probes=seeded, repeats=plan.repeats,
                                           seed=plan.seed + 1, fast_gram=False), cache_dir=exact_cache, extract=exact_options)
        t_exact, exact_rows = _timed(lambda: exact_sweep.run([ref]))
        reseeded_rows = reseeded.run([ref])
        shutil.rmtree(exact_cache, ignore_errors=True)
        diffs = exact_check(rows, exact_rows)
        floor = exact_check([r for r in exact_rows if r["probe"] in seeded], reseeded_rows)
        exact_lines = [
            "",
            f"Fast defaults vs the exact path (forward {exact_options.precision}, Gram products in float32 via "
            f"`SweepPlan(fast_gram=False)`; same splits, run after the timings and timed by none, {t_exact:.0f} s): "
            f"|test_acc difference| x n_test per (concept, module), in test images. The noise floor: the exact "
            f"path against itself with the MLPs' init seed {plan.seed + 1} instead of {plan.seed}.",
            "",
            "| probe kind | mean | max | within one test image | noise floor: mean | max |",
            "|---|---:|---:|---:|---:|---:|",
            *(f"| {k} | {d.mean():.2f} | {d.max():.2f} | {(d <= 1.0 + 1e-9).mean() * 100:.0f}% | "
              + (f"{floor[k].mean():.2f} | {floor[k].max():.2f} |" if k in floor else "0 (no seed) | 0 |")
              for k, d in diffs.items()),
        ]

    # ---- table
    kinds = {k: probe_kind(k) for k in plan.probes}
    lines = [
        f"# Probe sweep, one checkpoint ({'--small' if args.small else 'seed sizes'})",
        "",
        f"Random-init MobileNetV2 (torchvision, 1000 classes), {len(modules)} modules, {n_images} concept-world "
        f"images at {cfg['size']}x{cfg['size']}, {len(tasks)} concepts x {cfg['pos'] + cfg['neg']} images "
        f"({cfg['pos']} positives, 30% test; the concepts' image sets are disjoint), probe kinds "
        f"{', '.join(plan.probes)}, repeats {plan.repeats} (the stored split"
        f"{f' + {plan.repeats} re-split' + 's' * (plan.repeats > 1) if plan.repeats else ''} per concept, each with a shuffled-label control): {n_fits} fits ({n_fits} nested runs), {models_per_kind} probe models per kind. "
        f"Forward precision {precision_text(sweep.extract, sweep.device)}, maps cached as bf16; Gram products over full maps in "
        f"{'float32' if products is None else str(products).removeprefix('torch.')} (pooled vectors: float32). Embedded sqlite store (WAL).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, "
        f"torch.get_num_threads() {torch.get_num_threads()}. Command: `python benchmarks/bench_sweep.py"
        f"{' --small' if args.small else ''}{f' --repeats {args.repeats}' if args.repeats else ''}"
        f"{'' if args.exact_check else ' --no-exact-check'}`.",
        "",
        "| part | ours s | naive s | speed-up | naive reference |",
        "|---|---:|---:|---:|---|",
        f"| decode + transform images (once per sweep) | {t_decode:.1f} | | | |",
        f"| extraction: one hooked pass, all modules, bf16 maps to disk | {parts['extraction']:.1f} | "
        f"{naive_extract:.1f} | {naive_extract / parts['extraction']:.1f}x | {len(modules)} truncated fp32 passes, "
        f"timed on {cfg['naive_images']} images and scaled to {n_images} |",
        f"| probes linear_gap | {parts['probes linear_gap']:.1f} | {t_sk_lin:.1f} | "
        f"{t_sk_lin / parts['probes linear_gap']:.1f}x | sklearn LogisticRegression one fit at a time, all "
        f"{models_per_kind} fits |",
        f"| probes non_linear_gap | {parts['probes non_linear_gap']:.1f} | {naive_mlp:.1f} | "
        f"{naive_mlp / parts['probes non_linear_gap']:.1f}x | sklearn MLPClassifier (full-batch SGD, same steps), "
        f"{cfg['naive_mlp_fits'] // 3 * 3} fits timed, scaled to {models_per_kind} |",
        f"| probes non_linear_non_gap | {parts['probes non_linear_non_gap']:.1f} | {naive_map:.1f} | "
        f"{naive_map / parts['probes non_linear_non_gap']:.1f}x | explicit torch MLP on the full maps, "
        f"{cfg['naive_explicit_steps']} steps per module timed, scaled to {map_params['steps']} steps x "
        f"{models_per_kind // len(modules)} fits per module |",
        f"| logging {n_fits} nested fit runs + results (time the sweep waited on it) | {parts['logging']:.1f} | "
        f"{n_fits / fluent_rate:.1f} | {fast_rate / fluent_rate:.1f}x | fluent start_run + one call per value |",
        f"| **whole sweep** (after decoding) | **{t_sweep:.1f}** | "
        f"{naive_extract + t_sk_lin + naive_mlp + naive_map + n_fits / fluent_rate:.1f} | | sum of the naive parts |",
        "",
        f"- Logging alone: {fast_rate:.0f} nested runs/s through the sweep's writer (FitWriter.submit + flush: "
        f"finished runs in batched transactions on this sqlite store, {cfg['logging_runs']} runs); "
        f"{calls_rate:.0f} runs/s with three public MLflow calls per run (create_run + log_batch + "
        f"set_terminated, the path for a tracking server); {fluent_rate:.1f} runs/s fluent ({cfg['fluent_runs']} runs).",
        f"- Extraction: {n_images / parts['extraction']:.1f} images/s one hooked pass vs "
        f"{1 / naive_s_per_img:.2f} images/s for 19 truncated passes.",
        f"- linear_gap accuracy vs sklearn on the same splits: mean |difference| {lin_diff.mean():.2f} test images, "
        f"max {lin_diff.max():.2f} (n_test {int(n_test.mean())}); "
        f"{(lin_diff <= 1.0 + 1e-9).mean() * 100:.0f}% of (concept, module) within one test image.",
        f"- Hyper-parameters: {', '.join(f'{k} {dict(sorted(plan.params_of(k).items()))}' for k in kinds)}.",
        *exact_lines,
    ]
    stem = f"bench_sweep{f'_r{args.repeats}' if args.repeats else ''}{'_small' if args.small else ''}"
    out = Path(args.out) if args.out else RESULTS / f"{stem}.md"
    if not out.is_absolute():
        out = Path(__file__).resolve().parents[1] / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
