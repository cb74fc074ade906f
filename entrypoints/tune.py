"""MLproject entry point `tune`: Optuna studies of probe hyper-parameters, every trial a nested run (`clipprobe tune --help`)."""

from clipprobe.cli.entry import run

if __name__ == "__main__":
    run("tune")
