"""MLproject entry point `concepts`: CLIP-scored (or labelled) concept splits (`clipprobe concepts --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("concepts")
