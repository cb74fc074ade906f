"""MLproject entry point `train`: train a backbone, register every checkpoint (`clipprobe train --help`)."""

import sys

from clipprobe.cli.entry import run

if __name__ == "__main__":
    # `--resume true|false` (MLproject values) -> click's --resume / --no-resume pair.
    argv, out = sys.argv[1:], []
    i = 0
    while i < len(argv):
        if argv[i] == "--resume" and i + 1 < len(argv):
            out.append("--resume" if argv[i + 1].lower() in ("true", "1", "yes", "") else "--no-resume")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    run("train", out, flags=("zero-init-residual",))
