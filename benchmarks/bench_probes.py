"""Benchmark the probes: batched vs one-at-a-time fitting; Gram-space vs explicit full-map MLP.

Writes benchmarks/results/bench_probes.md. Usage: python benchmarks/bench_probes.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from clipprobe.probes import fit_many

log = logging.getLogger("bench_probes")
RESULTS = Path(__file__).parent / "results" / "bench_probes.md"


def _problem(n_concepts: int, splits: int, d: int, rows_per: int = 300, n_train: int = 210, seed: int = 0):
    """A union of images with n_concepts concepts, each with `splits` splits x {real, control} probes."""
    rng = np.random.default_rng(seed)
    N = n_concepts * rows_per
    X = rng.normal(size=(N, d)).astype(np.float32)
    B = n_concepts * splits * 2
    Y = np.zeros((B, N), np.int64)
    train = np.zeros((B, N), bool)
    evaluate = np.zeros((B, N), bool)
    for c in range(n_concepts):
        rows = np.arange(c * rows_per, (c + 1) * rows_per)
        labels = np.r_[np.ones(rows_per // 3, int), np.zeros(rows_per - rows_per // 3, int)]
        X[rows[labels == 1], c % d] += 1.5
        for s in range(splits):
            tr = np.zeros(rows_per, bool)
            tr[rng.choice(rows_per, n_train, replace=False)] = True
            for k, lab in enumerate((labels, rng.permutation(labels))):
                b = (c * splits + s) * 2 + k
                Y[b, rows], train[b, rows[tr]], evaluate[b, rows] = lab, True, True
    return X, Y, train, evaluate


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_linear(d: int, splits: int) -> dict:
    X, Y, train, evaluate = _problem(9, splits, d)
    B = len(Y)
    t_batch, fit = _timed(lambda: fit_many("linear_gap", X, Y, train, evaluate, {"weight_decay": 5e-3}))
    n_ref = min(B, 36)
    accs_ref, accs = [], []

    def one_at_a_time():
        for b in range(n_ref):
            rows = np.flatnonzero(evaluate[b])
            tr = train[b, rows]
            sc = StandardScaler().fit(X[rows[tr]])
            ref = LogisticRegression(C=1 / (5e-3 * tr.sum()), max_iter=1000).fit(sc.transform(X[rows[tr]]), Y[b, rows[tr]])
            accs_ref.append(ref.score(sc.transform(X[rows[~tr]]), Y[b, rows[~tr]]))
            accs.append(np.mean(fit.predictions()[b, rows[~tr]].numpy() == Y[b, rows[~tr]]))

    t_ref, _ = _timed(one_at_a_time)
    return {"what": f"linear_gap, d={d}", "probes": B, "ours_s": t_batch, "ours_fps": B / t_batch,
            "ref": f"sklearn LogisticRegression x{n_ref}", "ref_fps": n_ref / t_ref,
            "note": f"mean |acc diff| {np.mean(np.abs(np.array(accs) - accs_ref)):.4f}"}


def bench_mlp_gap(d: int, splits: int, steps: int) -> dict:
    X, Y, train, evaluate = _problem(9, splits, d)
    B = len(Y)
    params = {"steps": steps, "hidden": 128}
    t_batch, _ = _timed(lambda: fit_many("non_linear_gap", X, Y, train, evaluate, params))
    n_ref = 3

    def one_at_a_time():
        for b in range(n_ref):
            rows = np.flatnonzero(evaluate[b])
            tr = train[b, rows]
            sc = StandardScaler().fit(X[rows[tr]])
            MLPClassifier((128,), solver="sgd", momentum=0.9, learning_rate_init=0.01, batch_size=int(tr.sum()),
                          max_iter=steps, alpha=1e-3, n_iter_no_change=steps + 1, random_state=0
                          ).fit(sc.transform(X[rows[tr]]), Y[b, rows[tr]])

    t_ref, _ = _timed(one_at_a_time)
    return {"what": f"non_linear_gap, d={d}, {steps} steps", "probes": B, "ours_s": t_batch,
            "ours_fps": B / t_batch, "ref": f"sklearn MLPClassifier (sgd, full batch) x{n_ref}",
            "ref_fps": n_ref / t_ref, "note": ""}


def bench_mlp_map(d: int, steps: int, splits: int, explicit_steps: int) -> dict:
    X, Y, train, evaluate = _problem(1, splits, d)
    B = len(Y)
    params = {"steps": steps, "hidden": 128}
    t_gram, fit = _timed(lambda: fit_many("non_linear_non_gap", X, Y, train, evaluate, params, form="gram"))
    # explicit: one probe, a few steps, scaled linearly to `steps` (setup measured with 1 step)
    one = (Y[:1], train[:1], evaluate[:1])
    t1, _ = _timed(lambda: fit_many("non_linear_non_gap", X, *one, {**params, "steps": 1}, form="explicit"))
    tk, _ = _timed(lambda: fit_many("non_linear_non_gap", X, *one, {**params, "steps": 1 + explicit_steps},
                                    form="explicit"))
    per_step = (tk - t1) / explicit_steps
    t_explicit = t1 + per_step * (steps - 1)
    return {"what": f"non_linear_non_gap, d={d:,}, {steps} steps, {splits} split(s)", "probes": B,
            "ours_s": t_gram, "ours_fps": B / t_gram,
            "ref": f"explicit MLP (same math), timed 1 and {1 + explicit_steps} steps, scaled to {steps}",
            "ref_fps": 1 / t_explicit,
            "note": f"explicit {t_explicit:.1f} s/fit ({per_step * 1e3:.0f} ms/step, setup {t1:.1f} s)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    rows = []
    splits = 2 if args.quick else 6  # stored split + 5 re-splits
    for d in (320, 1280):
        rows.append(bench_linear(d, splits))
        log.info(rows[-1])
    rows.append(bench_mlp_gap(320, splits, 100 if args.quick else 300))
    log.info(rows[-1])
    d_map = 50_176 if args.quick else 401_408
    for s in (1, 3):
        rows.append(bench_mlp_map(d_map, 300, s, explicit_steps=3))
        log.info(rows[-1])
    lines = [
        "# Probe fitting benchmark",
        "",
        f"`python benchmarks/bench_probes.py{' --quick' if args.quick else ''}`, torch threads "
        f"{torch.get_num_threads()}, CPU (shared with other jobs: absolute numbers are noisy). "
        "Probes = concepts x splits x {real, control}; 300 images per concept, 210 train.",
        "",
        "| what | probes | ours (s) | ours (fits/s) | reference | reference (fits/s) | speed-up | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['what']} | {r['probes']} | {r['ours_s']:.2f} | {r['ours_fps']:.1f} | {r['ref']} | "
                     f"{r['ref_fps']:.2f} | {r['ours_fps'] / r['ref_fps']:.1f}x | {r['note']} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    log.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
