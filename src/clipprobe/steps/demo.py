"""The demo (the `main` entry point): the whole pipeline on the built-in concept world, as one parent run.

``DemoConfig`` holds the demo's sizes and choices; ``run`` opens the `main` run and runs each step through the
caller's ``invoke`` (the CLI runs each step's own command, so every step is a child run exactly as its command
line would make it), taking each later step's input from the runs the earlier ones finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clipprobe.concepts.config import WorldClipConfig
from clipprobe.core.step_config import StepConfig
from clipprobe.steps import StepFailed
from clipprobe.tracking import configs, discovery, runs

DEMO_MODEL = "demo_mobilenet_v2"
# The demo's recipe: MobileNetV2 (width 0.5) learns the world's 10 shapes at 64 px in ten epochs with
# AdamW, small batches, a one-cycle schedule (a short warm-up, then a cosine down, stepped per batch),
# residual blocks that start as the identity, and no random crops (a crop can cut off the shape that
# is the class). Without the zero-initialised residuals it sits at chance for about half the epochs;
# the reference SGD recipe needs far more epochs here.
DEMO_TRAINING = {"width_mult": 0.5, "batch_size": 16, "opt": "adamw", "lr": 0.01, "weight_decay": 1e-4,
                 "lr_scheduler": "onecycle", "lr_warmup_pct": 0.1, "zero_init_residual": True,
                 "min_crop_scale": 1.0}

# The world CLIP's epochs in the demo: the `clip` step's own default (WorldClipConfig.epochs, read, not retyped).
# 5 epochs learn colours (zero-shot 0.995) but not patterns (0.225, chance 0.25); 15 learn patterns too. Quiet,
# 5 epochs trained in 12 s, so 15 fit the demo's time budget (README: the demo's measured time).
DEMO_CLIP_EPOCHS = WorldClipConfig.epochs

# Every third of MobileNetV2's 19 modules, first and last included: "where" at a third of the cost.
DEMO_MODULES = tuple(f"module:{i}" for i in range(0, 19, 3))

# Measures beyond accuracy the demo shows whatever the sweep's defaults: MDL costs more where, as in the demo,
# there are no permutations (55% of its sweep: benchmarks/results/bench_measures_small.md), but the demo shows it.
DEMO_MEASURES = ("--mdl",)

# How the demo runs a step: its command's name and command-line arguments (each counts as given).
Invoke = Callable[..., None]


def probe_epochs(epochs: int) -> list[int]:
    """Early, middle and late epochs to probe out of 0..``epochs``: the random init, a quarter, half, the end."""
    return sorted({0, epochs // 4, epochs // 2, epochs})


def probe_epochs_of(value: Sequence[int] | str | None, epochs: int) -> list[int]:
    """``--probe-epochs`` as epochs: ``auto`` -> :func:`probe_epochs`, all (``None``) -> 0..``epochs``, else the
    given ones, each within 0..``epochs`` (a ``ValueError`` otherwise)."""
    if value == "auto":
        return probe_epochs(epochs)
    if value is None:
        return list(range(epochs + 1))
    value = [int(e) for e in value]
    outside = [e for e in value if not 0 <= e <= epochs]
    if not value or outside:
        raise ValueError(f"--probe-epochs: epochs to probe must lie in 0..{epochs}, got {','.join(map(str, value))!r}")
    return value


@dataclass(frozen=True)
class DemoConfig(StepConfig):
    """The demo's world sizes, training length, what its sweeps probe, and whether the world CLIP mines concepts
    too (``clip``). ``probe_epochs``: ``auto`` (0, a quarter, half, the last), None (all) or a list, resolved
    to the epochs when made; ``modules``: None probes all of them. Logged as ``main/config.json``."""

    STEP = "main"

    out: str = "worlds/demo"
    train_per_class: int = 200
    val_per_class: int = 20
    pool_size: int = 2000
    epochs: int = 10
    probe_epochs: tuple[int, ...] | str | None = "auto"
    repeats: int = 1
    modules: tuple[str, ...] | None = DEMO_MODULES
    permutations: int = 0
    seed: int = 0
    clip: bool = True
    clip_epochs: int = DEMO_CLIP_EPOCHS

    def __post_init__(self) -> None:
        object.__setattr__(self, "probe_epochs", tuple(probe_epochs_of(self.probe_epochs, self.epochs)))
        if self.modules is not None:
            object.__setattr__(self, "modules", tuple(self.modules) or None)

    @property
    def probed(self) -> str:
        """The probed epochs as the probe command takes them (``0,2,5,10``)."""
        return ",".join(map(str, self.probe_epochs))

    @property
    def modules_option(self) -> str:
        return ",".join(self.modules) if self.modules else "all"

    def params(self) -> dict[str, object]:
        """The `main` run's params, as the demo has always logged them."""
        return {"out": self.out, "train_per_class": self.train_per_class, "val_per_class": self.val_per_class,
                "pool_size": self.pool_size, "epochs": self.epochs, "probe_epochs": self.probed,
                "repeats": self.repeats, "modules": self.modules_option, "permutations": self.permutations,
                "seed": self.seed, "clip": self.clip, "clip_epochs": self.clip_epochs}


@dataclass(frozen=True)
class DemoOutput:
    """What the demo made: its `main` run and the probe sweeps it compared (annotations first, then CLIP's)."""

    run_id: str
    sweep_ids: tuple[str, ...]


def run(config: DemoConfig, *, invoke: Invoke, say: Callable[[str], None], device: str,
        experiment_name: str | None = None) -> DemoOutput:
    """world -> train -> concepts -> probe (+ neurons) [-> clip -> concepts (CLIP) -> probe] -> compare, each a
    child of one `main` run: ``invoke(command, *args)`` runs a step, ``say`` prints the demo's headings."""
    c = config
    common = ("--repeats", c.repeats, "--permutations", c.permutations, "--modules", c.modules_option,
              "--seed", c.seed, "--device", device)
    with runs.step_run("main", experiment_name=experiment_name, params=c.params()) as main_run:
        configs.log_config(c)
        say("== world: the built-in concept world")
        invoke("world", "--out", c.out, "--seed", c.seed, "--train-per-class", c.train_per_class,
               "--val-per-class", c.val_per_class, "--pool-size", c.pool_size, "--overwrite")
        say(f"== train: MobileNetV2 on the world's shapes, epochs 0..{c.epochs}, each a registered model")
        invoke("train", "--epochs", c.epochs, "--seed", c.seed, "--model-name", DEMO_MODEL,
               "--out-dir", f"{c.out}/checkpoints", "--no-resume", "--device", device,
               *(_option(k, v) for k, v in DEMO_TRAINING.items()))
        say("== concepts: top-k splits from the world's ground truth")
        invoke("concepts", "--source", "annotations", "--seed", c.seed)
        say(f"== probe: epochs {c.probed} x every module, concept and probe kind, each fit a nested run; "
            "then every unit of them scored against the concepts (--neurons)")
        invoke("probe", "--model-name", DEMO_MODEL, "--epochs", c.probed, *common, "--neurons", *DEMO_MEASURES)
        sweeps = [_latest("probe")]
        say("== neurons: the classifier's own units (logits) of the same checkpoints")
        invoke("neurons", "--sweep", sweeps[0].info.run_id, "--modules", "logits", "--device", device)
        if c.clip:
            say("== clip: a small CLIP learns the world from captions of its known attributes")
            invoke("clip", "--world", c.out, "--out", f"{c.out}/clip", "--epochs", c.clip_epochs,
                   "--seed", c.seed, "--device", device)
            clip_run = _latest("clip")
            say("== concepts: top-k splits mined by the world CLIP (the seed's prompt, softmax per group)")
            invoke("concepts", "--source", "clip", "--clip-model", clip_run.data.tags[discovery.CLIP_MODEL_TAG],
                   "--clip-weights", clip_run.data.tags[discovery.CLIP_WEIGHTS_TAG], "--num-workers", 0,
                   "--seed", c.seed, "--device", device)
            say(f"== probe: epoch {c.epochs} on CLIP's labels (same modules and probe kinds)")
            invoke("probe", "--model-name", DEMO_MODEL, "--epochs", c.epochs, *common,
                   "--splits-run", _latest("concepts").info.run_id, *DEMO_MEASURES)
            sweeps.append(_latest("probe"))
        say("== compare: the seed's tables, the what-where-when plot"
            + (", CLIP's labels beside the truth" if c.clip else ""))
        invoke("compare", *(r.info.run_id for r in sweeps))
    return DemoOutput(main_run.info.run_id, tuple(r.info.run_id for r in sweeps))


def _latest(step: str):  # -> mlflow's Run
    """The step's run just finished under this demo (the newest finished run of the step)."""
    try:
        return discovery.latest_run(step)
    except LookupError as err:  # pragma: no cover - the step above raised instead
        raise StepFailed(f"the demo's {step} step left no finished run ({err})") from None


def _option(name: str, value: object) -> str:
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag}={value}"
