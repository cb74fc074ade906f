"""The configs of the two steps that bring backbones in: ``TrainConfig`` (the `train` step's recipe) and
``CheckpointImport`` (the `checkpoints` step's files). Each checks itself when made (a one-line ``ValueError``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipprobe.backbones.architectures import DEFAULT_ARCHITECTURE, check_architecture
from clipprobe.core.step_config import StepConfig

# The reference trains MobileNetV2 with lr 0.045 on 8 GPUs x 32 images = a batch of 256.
REFERENCE_BATCH_SIZE = 256
# Optimisers and learning-rate schedules by their names in torchvision's references (--opt, --lr-scheduler).
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULERS = ("steplr", "cosineannealinglr", "onecycle")
# Schedules stepped after every batch rather than every epoch (their length is part of the recipe).
_PER_BATCH = ("onecycle",)
# Args that must match for a folder's checkpoints to be resumed.
_RESUME_KEYS = ("model", "width_mult", "num_classes", "batch_size", "opt", "lr", "momentum", "weight_decay",
                "lr_scheduler", "lr_step_size", "lr_gamma", "lr_min", "lr_warmup_pct", "zero_init_residual",
                "label_smoothing", "seed")
# Settings that 0 (as MLproject passes "nothing") leaves to the data: the learning rate, the image sizes.
_ZERO_IS_NONE = ("lr", "train_crop_size", "val_resize_size", "val_crop_size")
DEFAULT_CHECKPOINTS_DIR = Path("checkpoints")  # `train` writes to <this>/<model name> when no --out-dir is given

# Which weights of a checkpoint to take: the trained model, or the EMA the recipe keeps with --model-ema.
WEIGHTS = ("model", "ema")
# What a checkpoint file is called; a folder's files of these suffixes that --pattern leaves out are named.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")
# Format 1 (before clipprobe logged params under their option's name) called `arch` `architecture`.
_ARCH_RENAMED = {1: {"architecture": "arch"}}


@dataclass(frozen=True)
class TrainConfig(StepConfig):
    """Hyper-parameters of the reference recipe (``references/classification``, MobileNetV2 row): the
    ``train`` step's config, logged as ``train/config.json`` and rebuilt with ``tracking.configs.load_config``.

    ``arch``: the torchvision model (the reference's ``--model``). ``lr=None`` (or 0) scales linearly with the
    batch: ``base_lr * batch_size / 256`` (0.045 at 256, 0.01125 at 64). Crop and resize sizes (None or 0)
    default to the data's square image size (no crop), or to the reference 224 / 256 / 224 when images differ
    in size.

    ``opt`` and ``lr_scheduler`` take the reference's names: ``sgd`` (with ``momentum``) or
    ``adamw``; ``steplr`` (x ``lr_gamma`` every ``lr_step_size`` epochs) or ``cosineannealinglr``
    (from ``lr`` down to ``lr_min`` over ``epochs``, stepped per epoch like the reference), or
    ``onecycle`` (torch's OneCycleLR on the learning rate alone, stepped per batch: up from ``lr / 25``
    to ``lr`` over the first ``lr_warmup_pct`` of all steps, then a cosine down to about zero).
    ``zero_init_residual`` starts every residual block as the identity (its last BatchNorm scale at
    zero, as torchvision's ResNet option of that name does), which shortens the plateau at chance
    that a narrow network trained from scratch sits on.
    """

    STEP = "train"
    FORMAT = 2
    RENAMED = _ARCH_RENAMED

    arch: str = DEFAULT_ARCHITECTURE
    width_mult: float = 1.0
    epochs: int = 10
    batch_size: int = 64
    opt: str = "sgd"
    lr: float | None = None
    base_lr: float = 0.045
    momentum: float = 0.9
    weight_decay: float = 4e-5
    lr_scheduler: str = "steplr"
    lr_step_size: int = 1
    lr_gamma: float = 0.98
    lr_min: float = 0.0
    lr_warmup_pct: float = 0.3
    zero_init_residual: bool = False
    label_smoothing: float = 0.0
    train_crop_size: int | None = None
    val_resize_size: int | None = None
    val_crop_size: int | None = None
    min_crop_scale: float = 0.08
    hflip_prob: float = 0.5
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        for name in _ZERO_IS_NONE:
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)
        check_architecture(self.arch, self.width_mult)
        for name in ("epochs", "batch_size", "lr_step_size"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}")
        if self.scaled_lr() <= 0:
            raise ValueError(f"learning rate must be positive, got {self.scaled_lr()}")
        if self.opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.opt!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"unknown lr scheduler {self.lr_scheduler!r}: choose one of {', '.join(LR_SCHEDULERS)}")
        if not 0 <= self.lr_min < self.scaled_lr():
            raise ValueError(f"lr_min must lie in [0, lr={self.scaled_lr()}), got {self.lr_min}")
        if not 0 < self.lr_warmup_pct < 1:
            raise ValueError(f"lr_warmup_pct must lie strictly between 0 and 1, got {self.lr_warmup_pct}")

    def scaled_lr(self) -> float:
        """The learning rate in force: ``lr`` if given, else ``base_lr * batch_size / 256``."""
        return float(self.lr) if self.lr is not None else self.base_lr * self.batch_size / REFERENCE_BATCH_SIZE

    def to_params(self) -> dict[str, Any]:
        """The config as a step run logs its params: every field under its option's name, ``lr`` resolved."""
        return {**asdict(self), "lr": self.scaled_lr()}

    def checkpoint_args(self) -> dict[str, Any]:
        """The recipe as each saved checkpoint's ``args`` holds it: the reference's ``model`` for the architecture
        (and ``architecture``, the key the registry's metadata reads), ``lr`` resolved."""
        recipe = asdict(self)
        arch = recipe.pop("arch")
        return {**recipe, "architecture": arch, "model": arch, "lr": self.scaled_lr()}

    def resume_keys(self) -> tuple[str, ...]:
        """Args a resumed run must share with the saved one (a cosine schedule's length is one)."""
        return _RESUME_KEYS + (("epochs",) if self.lr_scheduler in ("cosineannealinglr", "onecycle") else ())

    @property
    def per_batch_schedule(self) -> bool:
        return self.lr_scheduler in _PER_BATCH


@dataclass(frozen=True)
class CheckpointImport(StepConfig):
    """The ``checkpoints`` step's config: which files of a folder become versions of which registered model.

    ``width_mult`` / ``num_classes``: only when the files' args do not say (else read from the weights).
    ``model_name`` defaults to the architecture's name (``-ema`` appended for the EMA weights).
    """

    STEP = "checkpoints"
    FORMAT = 2
    RENAMED = _ARCH_RENAMED

    folder: Path
    arch: str = DEFAULT_ARCHITECTURE
    width_mult: float | None = None
    num_classes: int | None = None
    weights: str = WEIGHTS[0]
    model_name: str | None = None
    pattern: str = "*.pth"

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder).resolve())
        check_architecture(self.arch)
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown weights {self.weights!r}: choose one of {', '.join(WEIGHTS)}")
        if not self.model_name:
            name = self.arch if self.weights == WEIGHTS[0] else f"{self.arch}-{self.weights}"
            object.__setattr__(self, "model_name", name)

    def params(self) -> dict[str, Any]:
        """The checkpoints run's params, under the options' names (nothing given: "")."""
        return {"folder": str(self.folder), "arch": self.arch, "width_mult": self.width_mult or "",
                "num_classes": self.num_classes or "", "model_name": self.model_name, "pattern": self.pattern,
                "weights": self.weights}

    def files(self) -> list[Path]:
        """The files to import, sorted; a ``ValueError`` naming the pattern when none match."""
        found = sorted(p for p in self.folder.glob(self.pattern) if p.is_file())
        if not found:
            raise ValueError(f"no files match {self.pattern!r} in {self.folder}; "
                             + (self.left_out(found) or "pass --pattern"))
        return found

    def left_out(self, found: list[Path]) -> str | None:
        """What the pattern leaves out of the folder that looks like checkpoints of another kind (``.pt``,
        ``.safetensors`` beside ``*.pth``) and the option that takes them, else None."""
        matched = {p.suffix.lower() for p in found}  # model_*.pth leaving out checkpoint.pth is no news
        suffixes = sorted(p.suffix.lower() for p in self.folder.iterdir()
                          if p.is_file() and p.suffix.lower() in set(CHECKPOINT_SUFFIXES) - matched)
        if not suffixes:
            return None
        common = max(set(suffixes), key=suffixes.count)
        return (f"{len(suffixes)} other checkpoint file(s) ({', '.join(sorted(set(suffixes)))}) do not match "
                f"{self.pattern!r}: pass --pattern '*{common}' to import them")
