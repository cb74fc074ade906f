"""MLproject entry point `world`: the built-in concept world (`clipprobe world --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("world")  # --overwrite true|false: the command's own flag
