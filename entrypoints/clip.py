"""MLproject entry point `clip`: a small CLIP trained on the concept world (`clipprobe clip --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("clip")
