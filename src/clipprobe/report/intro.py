"""The report's opening for a newcomer: what it shows, how to read it, and where its numbers come from."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from clipprobe.probes.kinds import PROBE_KINDS


@dataclass(frozen=True)
class Provenance:
    """Where one sweep's numbers come from (filled in by the caller that reads the tracking store)."""

    name: str  # the sweep's short name in this report
    run_id: str
    run_name: str = ""
    experiment_id: str = ""
    model: str = ""
    versions: str = ""  # "v1 = epoch 0, v2 = epoch 1"
    concepts_run: str = ""
    date: str = ""  # when the sweep started, ISO 8601
    ui_url: str = ""  # the MLflow UI's address, when known: the runs get links

    def run_url(self, run_id: str | None = None) -> str:
        """The MLflow UI page of the sweep (or of another run of its experiment); "" without a UI address."""
        if not self.ui_url or not self.experiment_id:
            return ""
        return f"{self.ui_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id or self.run_id}"

    def model_url(self, version: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{self.model}/versions/{version}" if self.ui_url else ""


def probe_kind_text(name: str) -> str:
    """One line on what a probe kind reads and how, generated from the probe-kind table."""
    kind = PROBE_KINDS.get(name)
    if kind is None:
        return f"{name}: a probe kind this clipprobe does not describe"
    how = "a linear classifier (logistic regression)" if kind.estimator == "linear" else "a small MLP"
    what = ("the globally average-pooled activations: one value per channel, so it reads what is present "
            "but not where in the image" if kind.features == "gap" else
            "the whole activation map: every channel at every position, so it can also use where in the image")
    return f"{name}: {how} on {what}"


def intro_lines(probes: Sequence[str], baseline: float | None) -> list[str]:
    """The introduction as plain paragraphs (the HTML and the text report share them)."""
    base = f"{baseline:.3f}" if baseline is not None else "the share of the more common label"
    return [
        "This report answers three questions about a vision backbone: WHAT concepts (colours, patterns, shapes, "
        "...) its activations encode, WHERE (at which module, from the input side to the classifier head) and "
        "WHEN (at which training epoch). For every concept, module, checkpoint and probe kind, a small classifier "
        "(a probe) learns to tell images with the concept from images without it, using only that module's "
        "activations; its accuracy on held-out test images says how readable the concept is there.",
        "Probe kinds: " + "; ".join(probe_kind_text(p) for p in probes) + ".",
        "How to read the numbers: test accuracy [95% CI] is the accuracy on the stored split's test images with "
        "its exact (Clopper-Pearson) 95% interval; with about 90 test images, differences under about 0.1 are "
        f"within noise. The majority baseline ({base}) is what always answering the more common label scores: a "
        "probe shows the concept only when its whole interval lies above it (in the heatmaps, the baseline is "
        "marked on the colour scale). sel. (selectivity) is the accuracy minus that of the same probe on a "
        "control task (Hewitt and Liang: labels tied to each image's class instead of the concept); a high "
        "selectivity means the probe reads the concept rather than memorising the images' classes; it reads "
        "n/a (concept = class) where the concept is itself a class or a union of classes. Up/down "
        "arrows mark a significant change since the previous epoch (McNemar's exact test on the same test "
        "images, Holm-corrected).",
        "Order: the what-where-when heatmaps first (module x epoch per concept), then accuracy over epochs per "
        "module, when concepts emerge, sanity flags, and the full tables last.",
    ]


def provenance_lines(items: Sequence[Provenance]) -> list[str]:
    """One line per sweep: run, model and versions, concepts run, date (and the UI link when known)."""
    out = []
    for p in items:
        line = (f"sweep {p.name}: run {p.run_id}" + (f" ({p.run_name})" if p.run_name else "")
                + (f"; model {p.model}" if p.model else "") + (f" ({p.versions})" if p.versions else "")
                + (f"; concepts run {p.concepts_run}" if p.concepts_run else "")
                + (f"; started {p.date}" if p.date else ""))
        if p.run_url():
            line += f"; {p.run_url()}"
        out.append(line)
    return out


def intro_html(probes: Sequence[str], baseline: float | None) -> str:
    paragraphs = intro_lines(probes, baseline)
    kinds = "".join(f"<li><code>{html.escape(line.split(':', 1)[0])}</code>:{html.escape(line.split(':', 1)[1])}</li>"
                    for line in (probe_kind_text(p) for p in probes))
    return (f"<p>{html.escape(paragraphs[0])}</p><p>Probe kinds:</p><ul>{kinds}</ul>"
            + "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs[2:]))


def provenance_html(items: Sequence[Provenance]) -> str:
    """A table of the sweeps compared, with links into the MLflow UI when its address is known."""
    if not items:
        return "<p>Sweeps given as tables: no tracking provenance.</p>"
    esc = html.escape

    def link(text: str, url: str) -> str:
        return f'<a href="{esc(url)}">{esc(text)}</a>' if url else esc(text)

    rows = []
    for p in items:
        versions = esc(p.versions)
        rows.append(f"<tr><th>{esc(p.name)}</th><td>{link(p.run_name or p.run_id, p.run_url())}<br>"
                    f"<code>{esc(p.run_id)}</code></td><td>{esc(p.model)}</td><td>{versions}</td>"
                    f"<td>{link(p.concepts_run[:8], p.run_url(p.concepts_run) if p.concepts_run else '')}</td>"
                    f"<td>{esc(p.date)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("sweep", "MLflow run", "model", "versions (epochs)", "concepts run",
                                               "started"))
    note = "" if any(p.ui_url for p in items) else (
        '<p class="size">No MLflow UI address known: pass <code>--ui-url http://127.0.0.1:5000</code> to '
        "<code>clipprobe compare</code> (or track to an http:// server) for links to the runs.</p>")
    return (f'<table class="provenance"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{note}')
