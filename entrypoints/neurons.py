"""MLproject entry point `neurons`: unit scores of every checkpoint of a probe sweep (`clipprobe neurons --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("neurons")
