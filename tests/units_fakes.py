"""Units tables built by hand (neurons.schema's columns), with planted units whose story over epochs is known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipprobe.neurons.schema import SUMMARY_COLUMNS, UNIT_COLUMNS

EPOCHS = (0, 2, 5, 10)
N_POS, N_NEG = 50, 100
# (module, unit, concept) -> AUROC per epoch; every other unit and concept sits at chance (0.5).
PLANTED = {
    ("module:3", 1, "red"): (0.50, 0.97, 0.98, 0.99),     # emerges at 2 and stays
    ("module:3", 2, "red"): (0.52, 0.55, 0.61, 0.62),     # creeps over q < 0.05 at 5: no significant rise
    ("module:3", 3, "red"): (0.95, 0.96, 0.95, 0.97),     # a detector from the first epoch: never "emerges"
    ("module:7", 0, "red"): (0.50, 0.50, 0.95, 0.50),     # emerges at 5, gone at 10: does not stay
    ("module:7", 1, "circle"): (0.50, 0.60, 0.99, 0.99),  # AUROC passes at 2, IoU only from 5 (masks exist)
}
IOU = {("module:7", 1, "circle"): (0.0, 0.01, 0.09, 0.10)}
CONCEPTS = {"red": "colours", "circle": "shapes"}
UNITS = {"module:3": 5, "module:7": 4}


def p_value_of(auroc: float) -> float:
    """A two-sided normal-approximation p-value of an AUROC at N_POS, N_NEG (what the scorer would give)."""
    from scipy.stats import norm

    se = np.sqrt((N_POS + N_NEG + 1) / (12 * N_POS * N_NEG))
    return float(2 * norm.sf(abs(auroc - 0.5) / se))


def units_frame() -> pd.DataFrame:
    rows = []
    for e_i, epoch in enumerate(EPOCHS):
        for module, n in UNITS.items():
            for unit in range(n):
                for concept, group in CONCEPTS.items():
                    key = (module, unit, concept)
                    auroc = PLANTED.get(key, (0.5,) * len(EPOCHS))[e_i]
                    iou = IOU.get(key, (0.0,) * len(EPOCHS))[e_i] if concept == "circle" else None
                    rows.append({"epoch": epoch, "module": module, "module_path": module.replace("module:", "features."),
                                 "unit": unit, "concept": concept, "group": group, "auroc": auroc,
                                 "p_value": p_value_of(auroc), "soft_wpmi": 0.0, "iou": iou,
                                 "pooling": "mean", "p_method": "normal", "label_source": "clip",
                                 "n_pos": N_POS, "n_neg": N_NEG})
    frame = pd.DataFrame(rows)
    frame["q_value"] = frame["p_value"]  # q = p: the planted p-values are the story; BH is the scorer's job
    best = frame.loc[frame.groupby(["epoch", "module", "unit"])["auroc"].idxmax(), ["epoch", "module", "unit", "concept"]]
    frame = frame.merge(best.rename(columns={"concept": "auroc_label"}), on=["epoch", "module", "unit"])
    frame["wpmi_label"] = frame["auroc_label"]
    iou_best = frame.assign(_iou=frame["iou"].fillna(-1.0))
    iou_best = iou_best.loc[iou_best.groupby(["epoch", "module", "unit"])["_iou"].idxmax(),
                            ["epoch", "module", "unit", "concept"]]
    frame = frame.merge(iou_best.rename(columns={"concept": "iou_label"}), on=["epoch", "module", "unit"])
    return frame[list(UNIT_COLUMNS)]


def summary_frame(units: pd.DataFrame) -> pd.DataFrame:
    from clipprobe.neurons.emergence import is_detector

    data = units.assign(_det=is_detector(units), _auroc_det=(units["auroc"] > 0.5) & (units["q_value"] < 0.05),
                        _iou_det=units["iou"].astype(float) > 0.04)
    rows = []
    for (epoch, module, concept), g in data.groupby(["epoch", "module", "concept"], sort=False):
        best = g.loc[g["auroc"].idxmax()]
        rows.append({"epoch": epoch, "module": module, "concept": concept, "group": g["group"].iloc[0],
                     "n_units": len(g), "n_detectors_auroc": int(g["_auroc_det"].sum()),
                     "n_detectors_iou": int(g["_iou_det"].sum()) if g["iou"].notna().any() else None,
                     "best_unit": int(best["unit"]), "best_auroc": float(best["auroc"]),
                     "full_test_acc": 0.9, "full_test_acc_ci_low": 0.8, "full_test_acc_ci_high": 0.96, "smallest_k": 2})
    return pd.DataFrame(rows)[list(SUMMARY_COLUMNS)]
