"""MLproject entry point `main`: the full demo on the concept world (`clipprobe demo --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("demo")
