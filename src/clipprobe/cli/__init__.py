"""The ``clipprobe`` command: a click group with one sub-command per pipeline step."""

from __future__ import annotations

import importlib
import logging
import os

import click

from clipprobe import __version__

# Step name -> module under clipprobe.cli defining a click command of the same name. Modules load
# only when their command runs, so `clipprobe world` never pays for importing open_clip.
COMMANDS: dict[str, str] = {
    "world": "world",
    "train": "train",
    "checkpoints": "checkpoints",
    "clip": "clip",
    "concepts": "concepts",
    "probe": "probe",
    "tune": "tune",
    "neurons": "neurons",
    "compare": "compare",
    "demo": "demo",
}


class StepGroup(click.Group):
    """A group whose sub-commands are imported on first use, listed in pipeline order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"clipprobe.cli.{COMMANDS[cmd_name]}")
        return getattr(module, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple:
        """Check an http(s) tracking server once for every command, before the command's module is
        imported (that alone takes seconds) and unless only its help is asked for."""
        from clipprobe.cli.failures import check_tracking_server

        if not any(a in ("-h", "--help") for a in args[1:]):
            check_tracking_server()
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        """Every command fails the same way: usage errors exit 2 and user, data or environment errors
        (files, the tracking store, a step's run failing on its data: ``steps.StepFailed``) exit 1, each in
        one line (``-v`` shows the traceback); an interrupt exits 130 (Ctrl-C) or 143 (SIGTERM) and its run
        ends KILLED."""
        from clipprobe.cli.failures import expected_error, interrupted, restore_signals
        from clipprobe.steps import StepFailed

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            raise interrupted(err) from None
        except StepFailed as err:  # its message says it all: no traceback to offer
            raise click.ClickException(" ".join(str(err).split())) from None
        except Exception as err:
            if not expected_error(err) or ctx.params.get("verbose"):
                raise
            raise click.ClickException(f"{' '.join(str(err).split())} (-v shows the traceback)") from None
        finally:
            restore_signals()


@click.group(cls=StepGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clipprobe")
@click.option("-v", "--verbose", is_flag=True, help="Log diagnostics (DEBUG level).")
def main(verbose: bool) -> None:
    """What a vision backbone encodes, where (module) and when (epoch).

    Steps, in pipeline order: world -> train / checkpoints -> concepts -> probe -> tune -> compare.
    Runs go to MLFLOW_TRACKING_URI, by default the embedded store sqlite:///mlflow.db with
    artifacts under ./mlruns. `clipprobe demo` chains the steps on the built-in concept world.
    """
    from clipprobe.cli.failures import terminate_as_interrupt

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    terminate_as_interrupt()
