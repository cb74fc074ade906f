"""The N-GPU projection (benchmarks/project_gpus.py): its arithmetic, and that it reads the writer tables
that benchmarks/bench_tracking.py writes. The one-GPU number itself is measured on a GPU, never here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import project_gpus  # noqa: E402

GPU = {"device": "cuda", "device_name": "a test GPU", "torch": "x", "small": False, "seconds_per_checkpoint": 36.0,
       "decoding_seconds_per_worker": 4.0, "fits_per_checkpoint": 513, "modules": 19, "concepts": 9, "images": 2700,
       "image_size": 224, "repeats": 3, "permutations": 19, "commit": "abc1234", "measured_at": "then",
       "command": "python benchmarks/bench_sweep_gpu.py --device cuda --repeats 3"}
WRITERS = """| store | writers | fits per writer | fit runs/s (all writers) | wall s |
|---|---|---|---|---|
| sqlite (WAL, bulk) | 1 | 2000 | 100 | 20.0 |
| sqlite (WAL, bulk) | 4 | 2000 | failed: 1 of 4 writers failed: database is locked | 159.7 |
| mlflow server (2 workers) -> PostgreSQL (REST, public calls) | 1 | 200 | 3 | 71.1 |
| mlflow server (2 workers) -> PostgreSQL (REST, public calls) | 4 | 200 | 10 | 82.3 |
"""


def test_wall_time_is_the_larger_of_compute_and_the_store(tmp_path):
    (tmp_path / "w.md").write_text(WRITERS)
    rates = project_gpus.read_rates([tmp_path / "w.md"])
    assert rates == {"sqlite": {1: 100.0}, "mlflow server": {1: 3.0, 4: 10.0}}  # the failed row is left out
    rows = {r["gpus"]: r for r in project_gpus.project(GPU, rates, checkpoints=300)}
    assert rows[1]["compute_s"] == 300 * 36 + 4
    assert rows[1]["stores"]["sqlite"] == (300 * 36 + 4, "GPUs")  # 153,900 / 100 = 1539 s < 10,804 s
    assert rows[1]["stores"]["mlflow server"] == (153_900 / 3, "store")
    assert rows[64]["compute_s"] == 5 * 36 + 4  # ceil(300 / 64) whole checkpoints on the busiest worker
    assert rows[64]["stores"]["sqlite"] == (1539.0, "store")
    assert rows[2]["stores"]["mlflow server"] == (153_900 / 3, "store")  # 2 writers: not measured, 1's rate
    assert rows[64]["stores"]["mlflow server"] == (15_390.0, "store")  # held at the largest measured (4)


def test_a_later_table_replaces_an_earlier_row(tmp_path):
    (tmp_path / "a.md").write_text(WRITERS)
    (tmp_path / "b.md").write_text("| sqlite (WAL, bulk) | 4 | 2000 | 102 | 78.2 |\n| sqlite (WAL, bulk) | 1 | 2000 | 106 | 1 |\n")
    assert project_gpus.read_rates([tmp_path / "a.md", tmp_path / "b.md"])["sqlite"] == {1: 106.0, 4: 102.0}


def test_the_committed_writer_tables_give_every_store():
    rates = project_gpus.read_rates([ROOT / "benchmarks/results/bench_tracking_writers.md",
                                     ROOT / "benchmarks/results/bench_tracking_writers_sqlite.md"])
    assert set(rates) == {"sqlite", "PostgreSQL", "mlflow server"}
    assert all(set(by) == {1, 2, 4} for by in rates.values())


def test_an_unknown_store_or_no_rates_is_one_clear_error(tmp_path):
    (tmp_path / "w.md").write_text("| duckdb | 1 | 10 | 5 | 2.0 |\n")
    with pytest.raises(ValueError, match="unknown store 'duckdb'"):
        project_gpus.read_rates([tmp_path / "w.md"])
    (tmp_path / "e.md").write_text("# nothing measured\n")
    with pytest.raises(ValueError, match="bench_tracking.py writers"):
        project_gpus.read_rates([tmp_path / "e.md"])


def test_the_script_writes_the_table_and_names_what_it_used(tmp_path):
    (tmp_path / "gpu.json").write_text(json.dumps(GPU))
    (tmp_path / "w.md").write_text(WRITERS)
    out = tmp_path / "projection.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/project_gpus.py"), "--gpu", str(tmp_path / "gpu.json"),
                           "--writers", str(tmp_path / "w.md"), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "36.0 s per checkpoint** on a test GPU" in text and "commit abc1234" in text
    assert "| 1 | 3.00 h | 3.00 h (GPUs) | 14.25 h (store) |" in text
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks/project_gpus.py"), "--gpu", str(tmp_path / "no.json")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "bench_sweep_gpu.py --device cuda" in missing.stderr
