"""MLproject entry point `probe`: the probe sweep, every fit a nested run (`clipprobe probe --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("probe", flags=["allow-duplicate-weights", "no-keep-cache"])
