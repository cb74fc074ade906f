"""MLproject entry point `checkpoints`: import a checkpoint folder into the registry (`clipprobe checkpoints --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("checkpoints")
