"""The README's examples run as written.

Every line of every fenced ``bash`` and ``python`` block in README.md is either run here, in README order, in a
fresh directory with its own tracking store, or listed in ``NOT_RUN`` with the reason. A new example that is
neither fails the test, so the README cannot drift from what the commands accept.

A command runs exactly as the README spells it, with two kinds of additions, both declared below:
- ``SMALL``: options appended for what the README leaves at its default size (click takes the last value of an
  option, but an option the README line sets itself is never overridden), so the pipeline runs in minutes;
- ``PATHS``: the README's placeholders for the reader's own files and run ids, replaced by real ones made here.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Examples this machine cannot run, and why; each key is the start of the example's line.
NOT_RUN = {
    "make demo": "runs the demo; tests/test_demo.py runs it and checks what it recovers",
    "make test": "runs this test suite",
    "clipprobe concepts --pool /data/imagenet/val --clip-model ViT-B-32 --clip-pretrained openai":
        "downloads OpenAI's CLIP weights (no internet here); tests/test_concepts_clip_weights.py loads a local open_clip",
    "clipprobe concepts --clip-weights /models/open_clip_vitb32.pt --precision fp16 --device cuda":
        "needs a GPU and ViT-B-32 weights; the weight forms are tested in tests/test_concepts_clip_weights.py",
    "clipprobe concepts --pool /data/imagenet/val --class-labels":
        "needs ImageNet val, a GPU and CLIP weights; --class-labels is tested in tests/test_concepts_classes.py",
    "clipprobe tune --storage postgresql":
        "needs a PostgreSQL server at host 'db'; tests/test_tune_study.py shares one study between workers",
    # Many machines: servers and a cluster this machine does not have; the same on loopback is tested
    "sudo -u postgres create": "sets up a PostgreSQL server; tests/servers.py starts one on loopback",
    "mlflow server --backend-store-uri postgresql":
        "tests/servers.py runs this very line (readme_server_command) on a loopback PostgreSQL, 2 workers",
    "ray start --": "starts a Ray cluster over machines; tests/ray_cluster.py starts a local one",
    "export MLFLOW_TRACKING_URI=http://mlflow.internal": "names a server at host 'mlflow.internal'",
    "clipprobe checkpoints /shared/": "a folder of the reader's training run; other examples import checkpoints",
    "clipprobe probe --model-name mobilenet_v2 --epochs 0-299 --executor ray":
        "needs the Ray cluster and server above; tests/test_executors_ray.py and test_tracking_servers.py run it",
    "clipprobe probe --resume SWEEP_RUN_ID --executor ray":
        "needs the Ray cluster above; tests/test_executors_ray.py resumes a sweep with Ray workers",
    "CLIPPROBE_OPTUNA_STORAGE=postgresql": "needs the PostgreSQL and Ray cluster above; tests/test_executors_ray.py "
                                          "shares a study between two Ray workers",
    "mlflow run . -e probe --env-manager local -P executor=ray": "needs the Ray cluster above",
}

# Options appended to a step's examples (only those the example does not set itself), to keep the data small.
SMALL = {
    "world": {"--size": "32", "--pool-size": "400", "--train-per-class": "3", "--val-per-class": "1"},
    "train": {"--batch-size": "16"},
    "clip": {"--epochs": "1", "--batch-size": "8"},
    "concepts": {"--top-k": "12", "--negatives": "24"},
    "probe": {"--epochs": "0,5", "--modules": "module:0,module:18", "--permutations": "0", "--repeats": "0"},
    "tune": {"--n-trials": "2", "--folds": "2", "--modules": "module:0", "--concepts": "red,circle",
             "--epochs": "5"},
}
PLACEHOLDERS = ("SWEEP_RUN_ID", "TUNE_RUN_ID", "RUN_A", "RUN_B")


def readme_examples(text: str) -> list[tuple[str, str]]:
    """(language, example) for every fenced bash line and every python block, in order; comments and
    line continuations folded."""
    out = []
    for match in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```", text, re.S | re.M):
        lang, body = match.group(2), match.group(3)
        if lang == "python":
            out.append((lang, "\n".join(line[len(match.group(1)):] for line in body.splitlines())))
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append((lang, line))
    return out


def _not_run(line: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if line.startswith(start)), None)


def _step(line: str) -> str | None:
    words = shlex.split(line)
    return words[1] if len(words) > 1 and words[0] == "clipprobe" else None


def _with_small_options(line: str) -> str:
    step = _step(line)
    if step is None or "--resume" in line:  # a resume takes its options from the sweep it resumes
        return line
    given = set(re.findall(r"(--[\w-]+)", line))
    extra = [f"{flag} {value}" for flag, value in SMALL.get(step, {}).items() if flag not in given]
    return " ".join([line, *extra])


class Store:
    """The tracking store the examples write to, for the run ids the README leaves to the reader."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)

    def _runs(self, step: str):
        runs = self.client.search_runs(["0"], f"tags.`clipprobe.step` = '{step}' and attributes.status = 'FINISHED'",
                                       order_by=["attributes.start_time DESC"])
        return [r for r in runs if "clipprobe.level" not in r.data.tags]

    def value(self, placeholder: str) -> str | None:
        if placeholder == "TUNE_RUN_ID":
            runs = self._runs("tune")
            return runs[0].info.run_id if runs else None
        sweeps = self._runs("probe")
        if placeholder == "SWEEP_RUN_ID":
            return sweeps[0].info.run_id if sweeps else None
        with_5 = [r.info.run_id for r in sweeps if "5" in r.data.params.get("epochs", "").split(",")]
        index = PLACEHOLDERS.index(placeholder) - PLACEHOLDERS.index("RUN_A")
        return with_5[::-1][index] if len(with_5) > index else None


def _imported_checkpoints(folder: Path) -> Path:
    """The reader's own torchvision-reference checkpoints (`/data/mbv2_run`): two epochs of a tiny MobileNetV2 (0 and
    5, the epochs the small probe options take: imported under their own name, they are the latest model)."""
    import torch

    from clipprobe.backbones.architectures import build_model
    from clipprobe.backbones.checkpoints import write_checkpoint

    for epoch in (0, 5):
        torch.manual_seed(100 + epoch)
        model = build_model("mobilenet_v2", num_classes=10, width_mult=0.25)
        write_checkpoint(folder / f"model_{epoch}.pth", model=model, epoch=epoch,
                         args={"model": "mobilenet_v2", "width_mult": 0.25, "val_resize_size": 32,
                               "val_crop_size": 32})
    return folder


def test_every_readme_example_is_run_or_excused():
    examples = readme_examples((REPO / "README.md").read_text())
    assert len(examples) >= 20
    bare = [line for lang, line in examples if lang == "bash" and not _not_run(line) and _step(line) is None]
    assert bare == [], f"README examples neither run by tests/test_readme.py nor listed in NOT_RUN: {bare}"
    stale = [start for start in NOT_RUN if not any(line.startswith(start) for _, line in examples)]
    assert stale == [], f"NOT_RUN lists examples the README no longer has: {stale}"


def test_the_servers_the_tests_start_are_the_readmes():
    from servers import readme_server_command, readme_server_line

    line = readme_server_line()
    command = readme_server_command("postgresql+psycopg2://u@127.0.0.1:5/db", Path("/tmp/served"), 5123, workers=2)
    assert command[1:4] == ["-m", "mlflow", "server"]
    assert "--serve-artifacts" in command and "--allowed-hosts" in line
    assert [w for w in command if w.startswith("--")] == [w for w in shlex.split(line) if w.startswith("--")]
    for reader_value in ("db.internal", "PW", "/shared/", "0.0.0.0", "mlflow.internal", "5000"):
        assert not any(reader_value in word for word in command[4:]), (reader_value, command)
    with pytest.raises(AssertionError, match="--gunicorn-opts is not known"):
        readme_server_command("sqlite:///x.db", Path("/tmp/a"), 1, line=line + " --gunicorn-opts '-t 60'")


def test_small_options_never_override_what_the_readme_sets():
    line = "clipprobe probe --probes linear_gap --repeats 5 --params-from TUNE_RUN_ID"
    assert _with_small_options(line) == (
        line + " --epochs 0,5 --modules module:0,module:18 --permutations 0")
    assert _with_small_options("clipprobe probe --resume SWEEP_RUN_ID") == "clipprobe probe --resume SWEEP_RUN_ID"


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    (tmp_path / "tests").symlink_to(REPO / "tests")  # the README's repo-relative paths, e.g. tests/fixtures/
    paths = {"/data/mbv2_run": str(_imported_checkpoints(tmp_path / "mbv2_run"))}
    store = Store(uri)

    pending = [(lang, line) for lang, line in readme_examples((REPO / "README.md").read_text())
               if not (lang == "bash" and _not_run(line))]
    ran = []

    def ready(example):  # an example waits for the run id it names
        needed = {p: store.value(p) for p in PLACEHOLDERS if re.search(rf"\b{p}\b", example[1])}
        return needed if all(needed.values()) else None

    while pending:
        first = next((k for k, example in enumerate(pending) if ready(example) is not None), None)
        if first is None:
            pytest.fail(f"README examples name runs that none of its examples make: {pending}")
        needed = ready(pending[first])
        lang, line = pending.pop(first)
        started = time.perf_counter()
        if lang == "python":
            done = subprocess.run([sys.executable, "-c", line], env=env, cwd=tmp_path, capture_output=True,
                                  text=True, timeout=300)
        else:
            command = _with_small_options(line)
            for placeholder, value in {**paths, **needed}.items():
                command = re.sub(rf"(?<![\w/]){re.escape(placeholder)}\b", value, command)
            done = subprocess.run(command, shell=True, env=env, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=900)
        assert done.returncode == 0, f"README example failed: {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        ran.append(line)
        print(f"{time.perf_counter() - started:6.1f} s  {line}")  # where the time goes (pytest -s)

    assert any(line.startswith("clipprobe compare RUN_A RUN_B") for line in ran)
    assert (tmp_path / "outputs" / "compare" / "report.html").is_file()
