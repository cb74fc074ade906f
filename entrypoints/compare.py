"""MLproject entry point `compare`: tables and plots from probe sweeps (`clipprobe compare --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("compare")
