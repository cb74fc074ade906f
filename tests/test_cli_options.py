"""The shared click parameter types: what each accepts, returns and refuses."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from clipprobe.cli import options


def _echo(param_type: click.ParamType):
    @click.command()
    @click.option("--value", type=param_type, default="")
    def cmd(value):
        click.echo(repr(value))

    return lambda *args: CliRunner().invoke(cmd, list(args))


@pytest.mark.parametrize(("given", "expected"), [
    ("", None), ("all", None), ("a", ("a",)), ("a,b", ("a", "b")), (" a , b ", ("a", "b")), ("a b", ("a", "b")),
    ("module:1,module:10", ("module:1", "module:10")),
])
def test_names(given, expected):
    res = _echo(options.Names())("--value", given)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == repr(expected)


def test_names_with_choices_names_the_known_ones():
    res = _echo(options.Names(("red", "blue")))("--value", "red,pink")
    assert res.exit_code == 2
    assert "Invalid value for '--value': unknown 'pink': expected all or a comma list from red, blue" in res.output


@pytest.mark.parametrize(("given", "expected"), [
    ("", None), ("all", None), ("3", (3,)), ("5,0,2", (0, 2, 5)), ("0-3", (0, 1, 2, 3)), ("0-2,7", (0, 1, 2, 7)),
    ("latest", "latest"),
])
def test_epochs(given, expected):
    res = _echo(options.Epochs(words=("latest",)))("--value", given)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == repr(expected)


@pytest.mark.parametrize("given", ["3-1", "x", "1,,y"])
def test_epochs_refuses_with_the_accepted_forms(given):
    res = _echo(options.Epochs(words=("latest",)))("--value", given)
    assert res.exit_code == 2
    assert f"bad epochs {given!r}: expected all, a list like 0,2,5 or a range like 0-3 (or latest)" in res.output


@pytest.mark.parametrize(("given", "expected"), [("", None), ("last", None), ("LAST", None), ("0", 0), ("12", 12)])
def test_epoch(given, expected):
    res = _echo(options.Epoch())("--value", given)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == repr(expected)


@pytest.mark.parametrize("given", ["-1", "2.5", "first"])
def test_epoch_refuses(given):
    res = _echo(options.Epoch())("--value", given)
    assert res.exit_code == 2
    assert f"expected an integer >= 0 or 'last', got {given!r}" in res.output


def test_options_taking_a_run_id_say_so_in_every_command():
    """--resume, --splits-run and --params-from take an MLflow run id: one metavar, RUN_ID, in every --help."""
    from clipprobe.cli import COMMANDS, main

    found = []
    for step in COMMANDS:
        command = main.get_command(click.Context(main), step)
        for param in command.params:
            if isinstance(param, click.Option) and param.name in ("resume", "splits_run", "params_from") \
                    and not param.is_flag:
                found.append((step, param.name, param.metavar))
    assert {(s, n) for s, n, _ in found} >= {("probe", "resume"), ("probe", "splits_run"), ("probe", "params_from"),
                                             ("tune", "splits_run")}
    assert {m for _, _, m in found} == {"RUN_ID"}, found


def _every_option():
    from clipprobe.cli import COMMANDS, main

    yield "clipprobe", main
    for step in COMMANDS:
        yield step, main.get_command(click.Context(main), step)


def test_every_option_of_every_command_has_help_and_shows_its_default():
    """`clipprobe <cmd> --help` explains every option, and names its default: shown by click, or said in the
    help (options whose default is "nothing given" and on/off flags need neither)."""
    no_help, no_default = [], []
    for step, command in _every_option():
        for param in command.params:
            if not isinstance(param, click.Option) or param.name in ("help", "version"):
                continue
            name = f"{step} {param.opts[0]}"
            if len((param.help or "").split()) < 3:
                no_help.append(name)
            unset = param.default in (None, "", ()) or param.is_flag and param.default is not True
            if not (unset or param.show_default or "default" in (param.help or "").lower()):
                no_default.append(name)
    assert no_help == [], f"options without help: {no_help}"
    assert no_default == [], f"options whose --help hides their default: {no_default}"


def _config_commands():
    from clipprobe.report.config import CompareConfig
    from clipprobe.sweep.config import SweepConfig
    from clipprobe.tuning.config import TuneConfig

    return [("probe", SweepConfig), ("tune", TuneConfig), ("compare", CompareConfig),
            *_concept_config_commands(), *_backbone_and_world_commands()]


def _concept_config_commands():
    from clipprobe.concepts.config import ConceptsConfig, WorldClipConfig

    return [("concepts", ConceptsConfig), ("clip", WorldClipConfig)]


def _backbone_and_world_commands():  # and the demo, which chains them
    from clipprobe.backbones.config import CheckpointImport, TrainConfig
    from clipprobe.steps.demo import DemoConfig
    from clipprobe.world.config import WorldSpec

    return [("world", WorldSpec), ("train", TrainConfig), ("checkpoints", CheckpointImport), ("demo", DemoConfig)]


# Settings a config cannot do without (a command's arguments): given alike to both configs compared.
_REQUIRED = {"checkpoints": {"folder": "."}}


@pytest.mark.parametrize(("command", "config"), _config_commands())
def test_every_default_a_command_shows_is_its_configs_default(command, config):
    """A command's options fill its config only when given (options.given), so the defaults its --help shows
    must be the config's: the config built with every shown default given equals the config left to its own."""
    from dataclasses import fields

    from clipprobe.cli import main

    cmd = main.get_command(click.Context(main), command)
    names = {f.name for f in fields(config)}
    ctx = click.Context(cmd)
    shown = {p.name: p.type_cast_value(ctx, p.get_default(ctx)) for p in cmd.params
             if isinstance(p, click.Option) and p.name in names and p.get_default(ctx) is not None}
    assert shown, f"{command}: no option of {config.__name__} shows a default"
    required = _REQUIRED.get(command, {})
    for name, value in shown.items():
        assert config(**required, **{name: value}) == config(**required), \
            f"{command} --{name.replace('_', '-')} shows {value!r}"


def test_world_train_checkpoints_and_demo_log_their_params_under_their_options_names():
    """A logged param has its option's name (and MLproject's): `--arch` is logged as arch, not architecture."""
    from pathlib import Path

    import torch

    from clipprobe.backbones.config import CheckpointImport, TrainConfig
    from clipprobe.cli import main
    from clipprobe.steps.demo import DemoConfig
    from clipprobe.steps.train import TrainInputs
    from clipprobe.world.config import WorldSpec

    train = TrainInputs(TrainConfig(), Path("t"), None, Path("o"), "m", True, torch.device("cpu"))
    logged = {"world": WorldSpec().params("w"), "train": train.params(),
              "checkpoints": CheckpointImport(folder=".").params(), "demo": DemoConfig().params()}
    for command, params in logged.items():
        cmd = main.get_command(click.Context(main), command)
        names = {next((o for o in p.opts if o.startswith("--")), p.name).removeprefix("--").replace("-", "_")
                 for p in cmd.params}  # as the options are spelled (and MLproject's parameters)
        assert set(params) <= names, f"{command} logs {sorted(set(params) - names)}, which no option is called"
    assert train.params()["arch"] == CheckpointImport(folder=".").params()["arch"] == "mobilenet_v2"
