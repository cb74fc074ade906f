"""A tracking store like a researcher's after the demo and two more sweeps, built fast (no training, no
forward passes): steps, three registered checkpoints, three sweeps of 216 fits each through the real
FitWriter, descriptions and registry links as `clipprobe probe` writes them."""

from __future__ import annotations

import pandas as pd
from report_fakes import synthetic_results

from clipprobe.backbones.architectures import build_model
from clipprobe.tracking import fits, registry, runs
from clipprobe.tracking.fit_writer import FitWriter
from clipprobe.tracking.sweep_fits import SweepFits

MODEL = "mobilenet_v2"
ARGS = {"architecture": "mobilenet_v2", "width_mult": 0.25, "num_classes": 3, "val_resize_size": 24,
        "val_crop_size": 24}


def build_store(tmp) -> dict[str, object]:
    """Steps, checkpoints and three sweeps in MLflow's default experiment; returns their run ids."""
    import torch

    out: dict[str, object] = {"steps": {}, "sweeps": []}
    for step in ("world", "concepts"):
        with runs.step_run(step) as run:
            out["steps"][step] = run.info.run_id
    with runs.step_run("checkpoints", run_name="checkpoints mobilenet_v2",
                       tags={registry.MODEL_NAME_TAG: MODEL}) as run:
        out["steps"]["checkpoints"] = run.info.run_id
        for epoch in (1, 2, 3):
            torch.manual_seed(epoch)
            model = build_model("mobilenet_v2", num_classes=3, width_mult=0.25)
            registry.log_checkpoint(model, name=MODEL, epoch=epoch, source=f"model_{epoch}.pth", metadata=ARGS)
    concepts_run = out["steps"]["concepts"]
    for seed in range(3):
        table = synthetic_results(seed, modules=tuple(range(12))).assign(
            precision="fp32", model_version=lambda d: d["epoch"].astype(str))
        name = fits.sweep_run_name(MODEL, [1, 2, 3], concepts_run) + f" #{seed}"
        with runs.step_run("probe", run_name=name, params={"model_name": MODEL, "splits_run": concepts_run,
                                                            "seed": seed}) as sweep:
            writer, checkpoints = FitWriter(sweep.info.run_id), fits.CheckpointRuns(sweep.info.run_id)
            for epoch, rows in table.groupby("epoch"):
                records = rows.to_dict("records")
                ckpt = checkpoints.run_id(int(epoch), params={"epoch": int(epoch), "model_name": MODEL,
                                                                 "model_version": str(epoch), "fingerprint": "f"})
                writer.log_fits([(ckpt, r, {}) for r in records])
                checkpoints.finish(int(epoch), records)
            fits.log_results(sweep.info.run_id, SweepFits(sweep.info.run_id).table())
        fits.describe_sweep(sweep.info.run_id, pd.DataFrame(table))
        out["sweeps"].append((sweep.info.run_id, name))
    with runs.step_run("compare", run_name="compare") as run:
        out["steps"]["compare"] = run.info.run_id
    return out
