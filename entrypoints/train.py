"""MLproject entry point `train`: train a backbone, register every checkpoint (`clipprobe train --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("train")  # --resume / --zero-init-residual true|false: the command's own on/off flags
