"""Do the sweep's numbers hold on trained weights? Each forward precision against an independent pipeline.

For every registered checkpoint of a model (default: the demo's, after `make demo`; epoch 0 is the random
initialisation, the others are trained), the ``linear_gap`` probe of every module and concept is fitted
three or four ways on the stored split:

- independent: PIL + torchvision transforms, plain forward hooks on the unmodified model in fp32 (no
  BatchNorm folding, no channels_last, no cache), scikit-learn ``StandardScaler`` + ``LogisticRegression``
  with the same regularisation (C = 1 / (weight_decay x n_train));
- the sweep with ``--precision fp32`` (the default), ``bf16`` and ``auto`` (bf16 forced available, so the
  calibration decides module by module).

It reports, per module, the mean and max test images moved against the independent pipeline, the
``non_linear_gap`` noise floor (the exact path with another init seed) next to what bf16 moves, and the
time of the default sweep (all three probe kinds) on the last checkpoint.

Writes benchmarks/results/bench_trust.md.
Usage: python benchmarks/bench_trust.py [--model-name demo_mobilenet_v2] [--tracking-uri sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
RESULTS = Path(__file__).resolve().parent / "results"


def independent_gap(model: torch.nn.Module, modules: dict[str, str], root: Path, paths: list[str],
                    resize: int, crop: int, batch: int = 64) -> dict[str, np.ndarray]:
    """Pooled activations per module from a pipeline that shares no code with clipprobe's extraction."""
    from PIL import Image
    from torchvision import transforms as T

    steps = [T.Resize(resize)] + ([T.CenterCrop(crop)] if crop < resize else [])
    tf = T.Compose([*steps, T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    model = copy.deepcopy(model).float().eval()
    named = dict(model.named_modules())
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    hooks = [named[path].register_forward_hook(
        lambda _m, _i, o, name=name: out[name].append(o.float().mean((2, 3)).numpy()))
        for name, path in modules.items()]
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = torch.stack([tf(Image.open(root / p).convert("RGB")) for p in paths[i:i + batch]])
            model(x)
    for h in hooks:
        h.remove()
    return {name: np.concatenate(v) for name, v in out.items()}


def sklearn_test_correct(X: np.ndarray, task, weight_decay: float) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tr = np.asarray(task.train, bool)
    Xt, y = X[task.rows], np.asarray(task.labels)
    scaler = StandardScaler().fit(Xt[tr])
    clf = LogisticRegression(C=1.0 / (weight_decay * tr.sum()), max_iter=10_000, tol=1e-10)
    clf.fit(scaler.transform(Xt[tr]), y[tr])
    return int((clf.predict(scaler.transform(Xt[~tr])) == y[~tr]).sum())


def correct(rows: list[dict], probe: str) -> dict[tuple[str, str], float]:
    """(concept, module) -> test images correct on the stored split."""
    return {(r["concept"], r["module"]): r["test_acc"] * r["n_test"] for r in rows if r["probe"] == probe}


def moved(a: dict, b: dict) -> dict[str, np.ndarray]:
    """Per module: |a - b| in test images over the concepts."""
    out: dict[str, list[float]] = defaultdict(list)
    for key, value in a.items():
        out[key[1]].append(abs(value - b[key]))
    return {m: np.array(v) for m, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", default="demo_mobilenet_v2")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--splits-run", default=None, help="concepts run (default: the latest)")
    parser.add_argument("--epochs", default=None, help="epochs to check, e.g. 0,2,5,10 (default: all registered)")
    parser.add_argument("--out", default=str(RESULTS / "bench_trust.md"))
    args = parser.parse_args()
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri

    from clipprobe.activations.options import ExtractOptions
    from clipprobe.backbones.loader import load_backbone
    from clipprobe.concepts.splits import load_splits
    from clipprobe.sweep.plan import CheckpointRef, Sweep, SweepPlan
    from clipprobe.tracking import runs
    from clipprobe.tracking.registry import MLFLOW_REGISTRY, list_checkpoints

    splits_run = args.splits_run or runs.find_latest_run("concepts").info.run_id
    splits = load_splits(runs.download_artifact(splits_run, "concepts/splits.parquet"))
    checkpoints = list_checkpoints(args.model_name)
    if args.epochs:
        wanted = {int(e) for e in args.epochs.split(",")}
        checkpoints = [c for c in checkpoints if c.epoch in wanted]
    if not checkpoints:
        raise SystemExit(f"model {args.model_name!r} has no registered checkpoints: run `make demo` first")
    precisions = ["fp32", "bf16", "auto"]
    lin = SweepPlan(probes=("linear_gap",), repeats=0, permutations=0)
    wd = lin.params_of("linear_gap")["weight_decay"]
    lines = [
        "# Trust on trained weights: each forward precision against an independent pipeline",
        "",
        f"Model `{args.model_name}` ({len(checkpoints)} checkpoints; epoch 0 = random init), concepts run "
        f"`{splits_run}`, `linear_gap` on the stored split (weight_decay {wd}). Cells: mean / max test images "
        "moved per concept against the independent pipeline (PIL, plain hooks, fp32, scikit-learn).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}; one run. "
        f"Command: `python benchmarks/bench_trust.py --model-name {args.model_name}"
        f"{f' --epochs {args.epochs}' if args.epochs else ''}`.",
        "",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="bench_trust-"))
    try:
        for ckpt in checkpoints:
            backbone = load_backbone(ckpt.uri, registry=MLFLOW_REGISTRY)
            ref = CheckpointRef(ckpt.epoch, backbone.fingerprint, load=lambda b=backbone: b)
            sweep = Sweep(splits, lin, cache_dir=tmp / "fp32", progress=False)
            images = sweep.images(backbone.transform)
            tf = backbone.transform
            feats = independent_gap(backbone.module, backbone.probe_modules, Path(splits.pool_root), list(images.paths),
                                    tf.resize_size, tf.crop_size)
            indep = {(t.concept, m): float(sklearn_test_correct(feats[m], t, wd))
                     for m in backbone.probe_modules for t in sweep.tasks}
            per = {}
            for p in precisions:
                rows = Sweep(splits, lin, cache_dir=tmp / p, extract=ExtractOptions(precision=p), progress=False,
                             native_bf16=True).run([ref])  # auto calibrates as on a device with native bf16
                per[p] = moved(correct(rows, "linear_gap"), indep)
            lines += [f"## epoch {ckpt.epoch}", "",
                      "| module | " + " | ".join(f"{p} mean / max" for p in precisions) + " |",
                      "|---|" + "---:|" * len(precisions)]
            for m in backbone.probe_modules:
                lines.append(f"| {m} | " + " | ".join(f"{per[p][m].mean():.2f} / {per[p][m].max():.0f}"
                                                     for p in precisions) + " |")
            allm = {p: np.concatenate(list(per[p].values())) for p in precisions}
            lines += ["| **all** | " + " | ".join(f"**{allm[p].mean():.2f} / {allm[p].max():.0f}**"
                                                  for p in precisions) + " |", ""]
            print("\n".join(lines[-len(backbone.probe_modules) - 5:]), flush=True)

        # the MLP's noise floor and the default's cost, on the last (trained) checkpoint
        mlp = SweepPlan(probes=("non_linear_gap",), repeats=0, permutations=0)
        reseeded = SweepPlan(probes=("non_linear_gap",), repeats=0, permutations=0, seed=1)
        exact = correct(Sweep(splits, mlp, cache_dir=tmp / "fp32", progress=False).run([ref]), "non_linear_gap")
        floor = moved(correct(Sweep(splits, reseeded, cache_dir=tmp / "fp32", progress=False).run([ref]),
                              "non_linear_gap"), exact)
        bf16 = moved(correct(Sweep(splits, mlp, cache_dir=tmp / "bf16", extract=ExtractOptions(precision="bf16"),
                                   progress=False).run([ref]), "non_linear_gap"), exact)
        f_all, b_all = np.concatenate(list(floor.values())), np.concatenate(list(bf16.values()))
        lines += [f"## non_linear_gap at epoch {ref.epoch}: noise floor vs bf16", "",
                  f"The exact path with init seed 1 instead of 0 moves {f_all.mean():.2f} test images per fit on "
                  f"average (max {f_all.max():.0f}); bf16 instead of fp32 (seed 0) moves {b_all.mean():.2f} "
                  f"(max {b_all.max():.0f}).", ""]
        # the full-map MLP's bf16 Gram products (on by default where bf16 is native), forced on here
        import clipprobe.probes.design as design

        full = SweepPlan(probes=("non_linear_non_gap",), repeats=0, permutations=0)
        exact_full = correct(Sweep(splits, full, cache_dir=tmp / "fp32", progress=False).run([ref]), "non_linear_non_gap")
        floor_full = moved(correct(Sweep(splits, SweepPlan(probes=("non_linear_non_gap",), repeats=0, permutations=0, seed=1),
                                         cache_dir=tmp / "fp32", progress=False).run([ref]), "non_linear_non_gap"),
                           exact_full)
        native = design.native_bf16
        design.native_bf16 = lambda _device: True
        try:
            fast_full = moved(correct(Sweep(splits, full, cache_dir=tmp / "fp32", progress=False).run([ref]),
                                      "non_linear_non_gap"), exact_full)
        finally:
            design.native_bf16 = native
        ff, fl = np.concatenate(list(fast_full.values())), np.concatenate(list(floor_full.values()))
        lines += [f"## non_linear_non_gap at epoch {ref.epoch}: bf16 Gram products vs the noise floor", "",
                  f"bf16 products over full maps (fp32 features) move {ff.mean():.2f} test images per fit against "
                  f"float32 products (max {ff.max():.0f}); init seed 1 instead of 0 moves {fl.mean():.2f} "
                  f"(max {fl.max():.0f}).", ""]
        shutil.rmtree(tmp / "time", ignore_errors=True)
        timed = {}
        for p in ("fp32", "bf16"):
            t0 = time.perf_counter()
            Sweep(splits, SweepPlan(repeats=0, permutations=0), cache_dir=tmp / f"time-{p}", extract=ExtractOptions(precision=p),
                  progress=False).run([ref])
            timed[p] = time.perf_counter() - t0
        lines += [f"## Cost of one checkpoint (epoch {ref.epoch}), all three probe kinds, repeats 0, one run", "",
                  f"fp32 (the default): {timed['fp32']:.1f} s; bf16: {timed['bf16']:.1f} s; permutations 0 "
                  "(this CPU emulates bf16 unless it has AVX512-BF16 or AMX).", ""]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-8:]))


if __name__ == "__main__":
    main()
