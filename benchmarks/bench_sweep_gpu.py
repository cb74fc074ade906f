"""The probe sweep on a GPU (--device cuda): seed sizes, one random-init MobileNetV2, parts timed.

Runs without MLflow (a GPU machine may lack it): extraction and probe fitting through the same
`Sweep` the CLI uses; probe accuracies on CUDA are compared with a CPU run of the same fits on a
few modules. Writes benchmarks/results/bench_sweep_gpu.md (or --out) and, beside it, the one-GPU
number as JSON (``bench_sweep_gpu.json``: seconds per checkpoint, decoding apart, with what was run),
which ``benchmarks/project_gpus.py`` turns into a projection for N GPUs.
Usage: python benchmarks/bench_sweep_gpu.py [--small] [--device cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import FULL, SMALL, make_world  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", default=".cache/bench_sweep_gpu")
    parser.add_argument("--cpu-modules", default="module:0,module:9,module:18",
                        help="modules re-fitted on the CPU to compare accuracies")
    parser.add_argument("--repeats", type=int, default=0,
                        help="re-splits on top of the stored one (0: the issue's workload; the run in README used 3)")
    parser.add_argument("--out", default=str(RESULTS / "bench_sweep_gpu.md"))
    args = parser.parse_args()

    import clipprobe.sweep.plan as sweep_mod
    from clipprobe.activations.cache import ActivationCache
    from clipprobe.backbones.architectures import ImageTransform, build_model, default_probe_modules
    from clipprobe.backbones.checkpoints import fingerprint
    from clipprobe.backbones.loader import Backbone
    from clipprobe.sweep.plan import DEFAULT_PROBES, CheckpointRef, Sweep, SweepPlan

    cfg = SMALL if args.small else FULL
    workdir = Path(args.workdir).resolve()
    t_world = time.perf_counter()
    splits = make_world(workdir, cfg)
    t_world = time.perf_counter() - t_world
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=1000).eval()
    modules = default_probe_modules(model)
    transform = ImageTransform(resize_size=cfg["size"], crop_size=cfg["size"])
    digest = fingerprint(model.state_dict())

    parts: dict[str, float] = defaultdict(float)
    real_eval, real_get = sweep_mod.evaluate_concepts, ActivationCache.get

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def timed_eval(X, tasks, kind, params, **kw):
        t = time.perf_counter()
        out = real_eval(X, tasks, kind, params, **kw)
        sync()
        parts[f"probes {kind.name}"] += time.perf_counter() - t
        return out

    def timed_get(self, *a, **kw):
        t = time.perf_counter()
        out = real_get(self, *a, **kw)
        sync()
        parts["extraction"] += time.perf_counter() - t
        return out

    def sweep_on(device: str, modules_subset=None):
        backbone = Backbone(model.to(device), modules, transform, digest, 0, "bench", "1", "mobilenet_v2")
        ref = CheckpointRef(0, digest, load=lambda: backbone, name="bench", version="1")
        cache = workdir / f"cache-{device}"
        shutil.rmtree(cache, ignore_errors=True)
        plan = SweepPlan(modules=modules_subset, concepts=list(cfg["concepts"]), probes=DEFAULT_PROBES,
                         repeats=args.repeats)
        sweep = Sweep(splits, plan, cache_dir=cache, device=torch.device(device), progress=False)
        t = time.perf_counter()
        sweep.images(transform)
        parts["decoding (once per worker)"] = time.perf_counter() - t
        t = time.perf_counter()
        rows = sweep.run([ref])
        return time.perf_counter() - t, rows, len(sweep.paths), plan

    sweep_mod.evaluate_concepts, ActivationCache.get = timed_eval, timed_get
    t_gpu, rows_gpu, n_images, plan = sweep_on(args.device)
    gpu_parts = dict(parts)
    parts.clear()
    subset = args.cpu_modules.split(",")
    t_cpu, rows_cpu, _, _ = sweep_on("cpu", subset)
    cpu_parts = dict(parts)
    sweep_mod.evaluate_concepts, ActivationCache.get = real_eval, real_get

    key = ("concept", "module", "probe")
    gpu = {tuple(r[k] for k in key): r for r in rows_gpu}
    diffs = [abs(gpu[tuple(r[k] for k in key)]["test_acc"] - r["test_acc"]) for r in rows_cpu]
    n_test = rows_cpu[0]["n_test"]
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [
        f"# Probe sweep on {args.device} ({'--small' if args.small else 'seed sizes'})", "",
        f"Random-init MobileNetV2, {len(modules)} modules, {n_images} concept-world images at "
        f"{cfg['size']}x{cfg['size']}, {len(cfg['concepts'])} concepts, probe kinds {', '.join(DEFAULT_PROBES)}, "
        f"1 + {args.repeats} splits each with a shuffled-label control: {len(rows_gpu)} fits.",
        f"Machine: {platform.machine()}, {name}, torch {torch.__version__}. Command: "
        f"`python benchmarks/bench_sweep_gpu.py{' --small' if args.small else ''} --device {args.device} --repeats {args.repeats}`; one run. "
        f"(World generation {t_world:.1f} s, not counted.)", "",
        f"| part | {args.device} s (all {len(modules)} modules) | cpu s ({len(subset)} modules: {', '.join(subset)}) |",
        "|---|---:|---:|",
    ]
    for part in sorted(set(gpu_parts) | set(cpu_parts)):
        lines.append(f"| {part} | {gpu_parts.get(part, 0):.1f} | {cpu_parts.get(part, 0):.1f} |")
    lines.append(f"| **sweep after decoding** | **{t_gpu:.1f}** | {t_cpu:.1f} |")
    lines += ["", f"- Same fits on {args.device} and cpu ({len(diffs)} fits): mean |test_acc difference| "
              f"{np.mean(diffs) * n_test:.2f} test images, max {np.max(diffs) * n_test:.2f} (n_test {n_test})."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    measured = {
        "device": args.device, "device_name": name, "torch": torch.__version__, "small": args.small,
        "seconds_per_checkpoint": round(t_gpu, 3),
        "decoding_seconds_per_worker": round(gpu_parts["decoding (once per worker)"], 3),
        "fits_per_checkpoint": len(rows_gpu), "modules": len(modules), "concepts": len(cfg["concepts"]),
        "images": n_images, "image_size": cfg["size"], "probes": list(DEFAULT_PROBES),
        "repeats": args.repeats, "permutations": plan.permutations,
        "commit": commit(), "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"python benchmarks/bench_sweep_gpu.py{' --small' if args.small else ''} --device {args.device} "
                   f"--repeats {args.repeats}",
    }
    out.with_suffix(".json").write_text(json.dumps(measured, indent=2) + "\n")


def commit() -> str:
    """The code measured: the git commit, with "+changes" when the tree differs from it. A copied tree
    without .git (a device machine) names it in CLIPPROBE_COMMIT."""
    if os.environ.get("CLIPPROBE_COMMIT"):
        return os.environ["CLIPPROBE_COMMIT"]
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + ("+changes" if dirty else "")


if __name__ == "__main__":
    main()
