"""The report at the seed's 300 epochs stays readable: round epoch labels under the heatmaps."""

from __future__ import annotations

from report_fakes import synthetic_results

from clipprobe.report.plots import epoch_ticks, what_where_when_figure


def test_heatmaps_label_round_epochs_at_many_epochs_and_every_epoch_when_few():
    def labels(epochs):
        return [epochs[i] for i in epoch_ticks(epochs)]

    assert labels(list(range(300))) == [0, 50, 100, 150, 200, 250]
    assert labels(list(range(151))) == [0, 25, 50, 75, 100, 125, 150]
    assert labels([0, 5, 10]) == [0, 5, 10]  # few epochs: each one
    assert labels(list(range(1, 31))) == [5, 10, 15, 20, 25, 30]
    assert labels(list(range(0, 300, 7)))[:3] == [0, 35, 70]  # no round multiples: every n-th column
    fig = what_where_when_figure(synthetic_results(epochs=tuple(range(40))), "linear_gap")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "5", "10", "15", "20", "25", "30", "35"]
