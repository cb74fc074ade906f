"""Micro-benchmark of the MLP probes at the seed's sizes: ``evaluate_concepts`` on synthetic arrays.

X (1780, d): d = 1280 (float32, like a pooled vector) or 16*112*112 = 200,704 (a bf16 memmap, like a full
map); 9 tasks of 300 rows (100 positives, 30% test), repeats=3 -> 72 probes in 36 groups per call.
Prints seconds per call and the test accuracies (``--save``/``--compare`` a JSON of them).
Usage: python benchmarks/bench_probe_mlp.py [--d 1280 200704] [--kind non_linear_gap] [--save f.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from clipprobe.activations.features import Bf16Matrix, to_bf16_bits
from clipprobe.probes.evaluation import ConceptTask, evaluate_concepts


def make_X(d: int, n: int, workdir: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 12)).astype(np.float32)
    if d <= 4096:
        mix = rng.normal(size=(12, d)).astype(np.float32)
        X = np.maximum(latent @ mix + rng.normal(size=(n, d)).astype(np.float32) * 2, 0)
        return X, latent
    path = workdir / f"X-{n}-{d}.npy"
    if not path.is_file():
        bits = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint16, shape=(n, d))
        mix = rng.normal(size=(12, d)).astype(np.float32)
        for r0 in range(0, n, 128):
            r1 = min(n, r0 + 128)
            x = np.maximum(latent[r0:r1] @ mix + rng.normal(size=(r1 - r0, d)).astype(np.float32) * 2, 0)
            bits[r0:r1] = to_bf16_bits(torch.from_numpy(x))
        bits.flush()
        del bits
        path.with_suffix(".tmp.npy").rename(path)
    np.save(workdir / "latent.npy", latent)
    return Bf16Matrix(np.load(path, mmap_mode="r")), latent


def make_tasks(latent: np.ndarray, n_tasks: int = 9, pos: int = 100, neg: int = 200) -> list[ConceptTask]:
    tasks = []
    n = latent.shape[0]
    for t in range(n_tasks):
        rng = np.random.default_rng([1, t])
        score = latent[:, t % latent.shape[1]] + 0.5 * latent[:, (t + 1) % latent.shape[1]] ** 2
        order = np.argsort(-score)
        p = rng.choice(order[: n // 3], pos, replace=False)
        q = rng.choice(order[n // 3:], neg, replace=False)
        rows = np.r_[p, q]
        labels = np.r_[np.ones(pos, int), np.zeros(neg, int)]
        train = np.zeros(len(rows), bool)
        for c in (0, 1):
            idx = np.flatnonzero(labels == c)
            train[rng.choice(idx, int(round(len(idx) * 0.7)), replace=False)] = True
        tasks.append(ConceptTask(f"c{t}", rows, labels, train))
    return tasks


def main() -> None:
    with contextlib.ExitStack() as stack:
        _main(stack)


def _main(stack: contextlib.ExitStack) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, nargs="+", default=[1280, 200704])
    ap.add_argument("--kind", nargs="+", default=None)
    ap.add_argument("--n", type=int, default=1780)
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--workdir", default=".cache/bench_probe_mlp")
    ap.add_argument("--save", default=None)
    ap.add_argument("--compare", default=None)
    ap.add_argument("--gram-products", choices=("fast", "exact"), default="fast",
                    help="fast: bf16 Gram-form products where the device has them (the default); exact: float32")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    for d in args.d:
        X, latent = make_X(d, args.n, workdir)
        tasks = make_tasks(latent)
        kinds = args.kind or (["non_linear_gap"] if d <= 4096 else ["non_linear_non_gap"])
        for kind in kinds:
            for _ in range(args.calls):
                t0 = time.perf_counter()
                res = evaluate_concepts(X, tasks, kind, repeats=3, fast_gram=args.gram_products == "fast")
                dt = time.perf_counter() - t0
                accs = [r.test_acc for r in res]
                ctrl = [r.test_control_acc for r in res]
                print(f"d={d} {kind}: {dt:.2f} s  mean test_acc {np.mean(accs):.4f} control {np.mean(ctrl):.4f}",
                      flush=True)
            out[f"{d}/{kind}"] = {"test_acc": accs, "control": ctrl, "seconds": dt}
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=1))
    if args.compare:
        ref = json.loads(Path(args.compare).read_text())
        for key, v in out.items():
            if key in ref:
                n_test = 90  # 30% of 300 rows
                da = np.abs(np.subtract(v["test_acc"], ref[key]["test_acc"])) * n_test
                dc = np.abs(np.subtract(v["control"], ref[key]["control"])) * n_test
                print(f"{key}: |delta test_acc| in test images: mean {da.mean():.3f} max {da.max():.3f}; "
                      f"control mean {dc.mean():.3f} max {dc.max():.3f}; seconds {ref[key]['seconds']:.2f} -> "
                      f"{v['seconds']:.2f}")


if __name__ == "__main__":
    main()
