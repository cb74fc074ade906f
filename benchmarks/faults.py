"""Does the test suite catch deliberate faults? Each fault is a small patch of the real code path, applied to a
scratch copy of the repo at a commit (`git worktree add --detach`). The suite (the copy's own `make test-fast` or
`make test` pytest command, its pytest-xdist workers included) runs there with ``-x``, so a caught fault stops it
early; the test files a fault names run first, then the rest of the suite. The first failing test counts when it
fails again alone with the fault and passes alone without it; otherwise it is deselected and the suite runs again.
Writes (merges into) benchmarks/results/faults.md: one row per commit, suite and fault; seconds include the
confirming runs.

    python benchmarks/faults.py --label BEFORE --ref ed3dfa9          # the fast suite at main's commit
    python benchmarks/faults.py --label AFTER                         # ... at HEAD
    python benchmarks/faults.py --suite full --only alias             # one fault, the full suite
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "faults.md"
SUITES = {"fast": "test-fast", "full": "test"}  # the Makefile target whose pytest command is the suite


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    path: str  # file under the repo root
    old: str  # text that must occur exactly once
    new: str
    first: tuple[str, ...] = ()  # test files run first (a guess at the catcher: the whole suite still runs)


FAULTS = [
    Fault("split", "wrong split: a concept's test rows join its training rows",
          "src/clipprobe/probes/evaluation.py",
          "        train[b, rows[tr]] = True\n", "        train[b, rows] = True\n",
          ("tests/test_neurons_sparse.py", "tests/test_probes_evaluation.py")),
    Fault("standardisation", "leaking standardisation: the scaler's mean and std come from train + test rows",
          "src/clipprobe/probes/design.py",
          "    mean = x[:t].mean(0)\n    c = x - mean\n    if t > 1:\n        ct = c[:t]\n",
          "    mean = x.mean(0)\n    c = x - mean\n    if t > 1:\n        ct = c\n",
          ("tests/test_probes_reference.py", "tests/test_probes_gram.py")),
    Fault("alias", "off-by-one alias: epoch-NNN points at the version of epoch NNN-1",
          "src/clipprobe/tracking/registry.py",
          "    client.set_registered_model_alias(name, epoch_alias(epoch), mv.version)\n",
          "    client.set_registered_model_alias(name, epoch_alias(epoch + 1), mv.version)\n",
          ("tests/test_backbones_registry.py", "tests/test_tracking_runs.py")),
    Fault("results_row", "results dropping a row: the sweep's results table loses its last fit",
          "src/clipprobe/tracking/sweep_fits.py",
          "        return results_frame(pd.concat(frames, ignore_index=True) if frames else [])\n",
          "        return results_frame(pd.concat(frames, ignore_index=True).iloc[:-1] if frames else [])\n",
          ("tests/test_sweep_resume.py", "tests/test_sweep_tracking.py")),
    Fault("resume", "resume refitting everything: finished checkpoints and fits are ignored",
          "src/clipprobe/steps/probe.py",
          "    return todo, done\n", "    return tuple(refs), set()\n", ("tests/test_sweep_resume.py",)),
]


def scratch_copy(ref: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(into), ref], check=True)
    return into


def remove_copy(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


def apply(fault: Fault, root: Path) -> None:
    file = root / fault.path
    text = file.read_text()
    if text.count(fault.old) != 1:
        raise SystemExit(f"fault {fault.name}: {fault.path} holds its target {text.count(fault.old)} times, not once; "
                         f"update FAULTS in {Path(__file__).name} to the code as it is now")
    file.write_text(text.replace(fault.old, fault.new))


def suite_args(root: Path, suite: str) -> list[str]:
    """The pytest arguments of the copy's own `make test-fast` / `make test` (its workers included)."""
    text = (root / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) \?= (.*)$", text, re.M))
    recipe = re.search(rf"^{re.escape(SUITES[suite])}:.*\n\t(.*)$", text, re.M).group(1)
    command = recipe.split("python -m pytest", 1)[1]
    command = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), command)
    return shlex.split(command)


def pytest(root: Path, args: list[str], timeout: float, log: Path) -> tuple[int, str, float]:
    """Run pytest in ``root`` (its own src first on the path), its output streamed to ``log`` as it runs."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=root,
                                  env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return code, log.read_text(errors="replace"), time.perf_counter() - started


def first_failure(output: str) -> str | None:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return found.group(1) if found else None


def run_fault(fault: Fault, ref: str, suite: str, extra: list[str], timeout: float, logs: Path,
              tries: int = 3) -> dict[str, str]:
    """The suite with the fault until a test fails that fails again alone with the fault and passes alone without
    it (a test that fails only once, e.g. under load, is deselected and the suite runs again, ``tries`` times)."""
    root = scratch_copy(ref, Path(tempfile.mkdtemp(prefix=f"fault-{fault.name}-")) / "repo")
    clean = (root / fault.path).read_text()
    flaky: list[str] = []
    started = time.perf_counter()
    try:
        apply(fault, root)
        faulty = (root / fault.path).read_text()
        for attempt in range(tries):
            log = logs / f"{ref}-{suite}-{fault.name}-{attempt}.log"
            deselect = [a for test in flaky for a in ("--deselect", test)]
            first = [f for f in fault.first if (root / f).is_file()]  # pytest drops the repeated paths
            code, out, _ = pytest(root, ["-x", *suite_args(root, suite), *deselect, *extra, *first, "tests"], timeout,
                                  log)
            test = first_failure(out)
            if code in (0, 5) or test is None:
                by = "-" if code in (0, 5) else f"suite failed without naming a test (exit {code}), see {log}"
                break
            again, _, _ = pytest(root, [test], timeout, log.with_suffix(".again.log"))
            (root / fault.path).write_text(clean)
            without, _, _ = pytest(root, [test], timeout, log.with_suffix(".clean.log"))
            (root / fault.path).write_text(faulty)
            if again != 0 and without == 0:
                return {"fault": fault.name, "caught": "yes", "by": _noted(test, flaky),
                        "seconds": f"{time.perf_counter() - started:.0f}"}
            flaky.append(test)
        else:
            by = f"{tries} failures, none caused by the fault"
        return {"fault": fault.name, "caught": "no", "by": _noted(by, flaky),
                "seconds": f"{time.perf_counter() - started:.0f}"}
    finally:
        remove_copy(root)
        shutil.rmtree(root.parent, ignore_errors=True)


def _noted(text: str, flaky: list[str]) -> str:
    return text + (f" (failed once without the fault's doing, deselected: {', '.join(flaky)})" if flaky else "")


HEADER = "| run | commit | suite | fault | caught | by test | seconds |"


def merge_rows(new: list[str]) -> None:
    """Rows of earlier runs stay, except those of the same run, commit, suite and fault."""
    key = lambda row: tuple(c.strip() for c in row.strip("|").split("|")[:4])  # noqa: E731
    old = [line for line in RESULT.read_text().splitlines() if line.startswith("| ") and line != HEADER] \
        if RESULT.exists() else []
    keys = {key(r) for r in new}
    rows = [r for r in old if key(r) not in keys] + new
    faults = "\n".join(f"- `{f.name}`: {f.what} (`{f.path}`)" for f in FAULTS)
    RESULT.write_text(
        "# Deliberate faults: does the suite catch them?\n\n"
        f"`python benchmarks/faults.py` applies each fault to a scratch copy of the repo at the commit, runs the suite\n"
        "there with `-x` and names the first failing test (re-run on the clean copy to confirm). Seconds are the\n"
        "suite's wall time until it stopped (2 shared cores: contended).\n\n"
        f"{faults}\n\n{HEADER}\n|---|---|---|---|---|---|---:|\n" + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="commit to copy (default HEAD; uncommitted changes are not in it)")
    parser.add_argument("--label", default="", help="name of this column, e.g. BEFORE or AFTER")
    parser.add_argument("--suite", choices=sorted(SUITES), default="fast")
    parser.add_argument("--only", action="append", choices=[f.name for f in FAULTS], help="one fault (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per suite run")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "clipprobe-faults",
                        help="folder for each run's pytest output (default: $TMPDIR/clipprobe-faults)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.ref], check=True,
                            capture_output=True, text=True).stdout.strip()
    args.logs.mkdir(parents=True, exist_ok=True)
    for fault in [f for f in FAULTS if not args.only or f.name in args.only]:
        row = run_fault(fault, commit, args.suite, args.pytest_args, args.timeout, args.logs)
        line = (f"| {args.label or '-'} | {commit} | {args.suite} | {row['fault']} | {row['caught']} | {row['by']} | "
                f"{row['seconds']} |")
        print(line, flush=True)
        merge_rows([line])


if __name__ == "__main__":
    main()
