"""The tables the neurons step writes, column by column: one name per quantity, shared by the scoring
code, the tracking layer, the report and the tests.

Sizes: MobileNetV2 has about 2,800 channels over its 19 modules plus 1,000 logits; times 9 concepts and
300 checkpoints the units table holds about 10 million rows, so it is written per checkpoint and read
column-wise (pyarrow), never row by row.
"""

from __future__ import annotations

# neurons/units.parquet: one row per (epoch, module, unit, concept).
UNIT_IDENTITY = ("epoch", "module", "module_path", "unit", "concept", "group")
UNIT_SCORES = (
    "auroc",        # pooled activation (mean over positions; `pooling` says which) separating positives from negatives
    "p_value",      # Mann-Whitney U, two-sided: exact where the samples have no ties, else normal with tie correction
    "q_value",      # Benjamini-Hochberg over the units of one (epoch, module, concept)
    "soft_wpmi",    # CLIP-Dissect's soft-WPMI of this unit for this concept (docs/neurons.md)
    "iou",          # NetDissect's IoU against the concept's pixel masks; null where no masks exist
)
UNIT_LABELS = (
    "auroc_label",  # the concept with the highest AUROC for this unit (same value on each of the unit's rows)
    "wpmi_label",   # argmax over concepts of soft_wpmi (from the truth where the concept source is the annotations)
    "iou_label",    # argmax over concepts of iou; null where no masks exist
)
UNIT_CONTEXT = ("pooling", "p_method", "label_source", "n_pos", "n_neg")
UNIT_COLUMNS = UNIT_IDENTITY + UNIT_SCORES + UNIT_LABELS + UNIT_CONTEXT

# neurons/sparse.parquet: one row per (epoch, module, concept, k): a probe on the k top-ranked units.
SPARSE_COLUMNS = (
    "epoch", "module", "concept", "group", "k", "units",  # units: JSON list of the unit indices used
    "test_acc", "test_acc_ci_low", "test_acc_ci_high", "n_test",
)

# neurons/summary.parquet: one row per (epoch, module, concept); the same numbers are metrics on the
# checkpoint runs (`neurons/<module>/<concept>/<name>`).
SUMMARY_COLUMNS = (
    "epoch", "module", "concept", "group",
    "n_units",                # channels of the module
    "n_detectors_auroc",      # units with auroc > 0.5 and q_value < DETECTOR_Q (one-sided by direction: see docs)
    "n_detectors_iou",        # units with iou > DETECTOR_IOU; null where no masks exist
    "best_unit", "best_auroc",
    "full_test_acc", "full_test_acc_ci_low", "full_test_acc_ci_high",
    "smallest_k",             # the smallest k whose sparse probe's test accuracy lies in the full probe's interval
)

DETECTOR_Q = 0.05      # a unit detects a concept when its AUROC > 0.5 at this BH q (INVERT-style)
DETECTOR_IOU = 0.04    # NetDissect's detector threshold
SPARSE_KS = (1, 2, 4, 8, 16, 32)  # and "all" (k = the module's unit count)
