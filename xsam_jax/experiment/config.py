"""What one run depends on: `TrainConfig`, the method names, their variants and defaults.

A run is a *method* (``sgd``, ``sam``, ``xsam``, ``gsam``, ``wsam``, ``fsam``, ``vasso``,
``fisher-sam``, ``looksam``) with modifiers that apply to every sharpness-aware method:
``adaptive`` (the ASAM ascent, Kwon et al. 2021; not for ``fisher-sam``, whose ball is the
Fisher's), ``late_phase_start`` (plain SGD until that fraction of training, then the method;
Zhou et al. 2025) and the cheaper schedules ``perturb_every`` (the method on every N-th step,
plain SGD steps between) or ``perturb_probability`` (the method on a random fraction of the
steps; Zhao et al. 2022). ``asam`` and ``late-sam`` remain as shorthands. On the command line
a variant is written ``method[+adaptive][+late=F][+every=N|+random=P]``, with XSAM's
``+rotation`` and ``+cap=D``, e.g. ``xsam+adaptive``, ``sam+late=0.75`` or ``sam+every=2``.

Defaults that a later version may change (ρ, ρ_max, the model) are resolved before a run is
saved (`TrainConfig.resolved`), so `--resume` and `xsam-analyse` read what the run used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from xsam_jax import data, models
from xsam_jax._src.validation import InvalidArgumentError, check_choice, check_int, check_range

METHODS = ("sgd", "sam", "xsam", "gsam", "wsam", "fsam", "vasso", "fisher-sam", "looksam")
# Shorthands: what each sets (a late phase only where --late-phase-start is not given).
ALIASES: dict[str, dict[str, Any]] = {
    "asam": {"optimizer": "sam", "adaptive": True},
    "late-sam": {"optimizer": "sam", "late_phase_start": 0.8},
}
OPTIMIZERS = METHODS + tuple(ALIASES)
# The papers' radii: SAM's "solid default" (Foret et al. 2021), ASAM's (Kwon et al. 2021),
# XSAM's 0.15 / 0.3 (Chen & Zhou 2026); GSAM and WSAM start from SAM's; F-SAM and VaSSO from
# their code's defaults (0.05); Fisher SAM's γ = 0.1; LookSAM (no official code) from SAM's.
PAPER_RHO = {
    "sam": 0.05,
    "xsam": 0.15,
    "gsam": 0.05,
    "wsam": 0.05,
    "fsam": 0.05,
    "vasso": 0.05,
    "fisher-sam": 0.1,
    "looksam": 0.05,
}
# `perturbation_mask` values: "norm" perturbs the normalisation layers only (SAM-ON).
PERTURBATION_MASKS = ("norm",)
PAPER_RHO_ADAPTIVE = 0.5
# Radii chosen on validation data by the study (`xsam-study`, README "Results"), per
# (dataset, model): they replace the papers' where the study measured the setting. A test holds
# them to the committed results (`study.report.tuned_radii`). XSAM's choice is ρ_max = ρ on all
# three settings: the authors' ρ_max = 2ρ trained worse at every ρ ≥ 0.1 of the grid.
TUNED_RADII: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    ("mnist1d", "cnn1d"): {
        "sam": {"rho": 0.1},
        "sam+adaptive": {"rho": 0.5},
        "gsam": {"rho": 0.1},
        "wsam": {"rho": 0.02},
        "xsam": {"rho": 0.1, "rho_max": 0.1},
        "xsam+adaptive": {"rho": 0.5, "rho_max": 0.1},
    },
    ("mnist1d", "cnn1d_wide"): {
        "sam": {"rho": 0.2},
        "sam+adaptive": {"rho": 1.0},
        "gsam": {"rho": 0.1},
        "wsam": {"rho": 0.02},
        "xsam": {"rho": 0.1, "rho_max": 0.1},
        "xsam+adaptive": {"rho": 0.5, "rho_max": 0.1},
    },
    ("digits", "mlp"): {
        "sam": {"rho": 0.05},
        "sam+adaptive": {"rho": 0.2},
        "gsam": {"rho": 0.05},
        "wsam": {"rho": 0.02},
        "xsam": {"rho": 0.05, "rho_max": 0.05},
        "xsam+adaptive": {"rho": 0.5, "rho_max": 0.1},
    },
}
DEFAULT_MODEL = {
    "mnist1d": "cnn1d",
    "digits": "mlp",
    "cifar10": "resnet18",
    "cifar100": "resnet18",
    "svhn": "resnet18",
    "fashion_mnist": "resnet18",
}


def flag(field: str) -> str:
    """The `xsam-train` flag of a `TrainConfig` field: batch_size -> --batch-size."""
    return "--" + field.replace("_", "-")


@dataclasses.dataclass
class TrainConfig:
    """Everything one run depends on (defaults: XSAM, 1-D CNN, MNIST-1D, about a minute on CPU).

    ``optimizer`` is a method of `METHODS` (a shorthand of `ALIASES` is rewritten into it);
    ``adaptive`` uses the ASAM ascent; ``late_phase_start`` F runs plain SGD for the first
    fraction F of the steps (None: the method throughout); after it, ``perturb_every`` N climbs
    on the steps whose count is a multiple of N only, ``perturb_probability`` P on a random
    fraction P of them (drawn from the run's seed), the other steps being plain SGD steps
    (None: every step). ``rho`` None takes the default radius (`default_radii`), ``rho_max``
    None likewise (XSAM only). ``search_every`` None searches α* once an epoch (0: never, α
    stays 1, i.e. SAM computed through XSAM); ``xsam_reuse`` and ``max_rotation`` (degrees) are
    XSAM's options beyond the paper (`xsam_jax.xsam`). ``model`` None takes the dataset's
    default model, ``augment`` None augments image datasets only (crop, flip, Cutout).
    ``val_fraction`` holds out that fraction of the training set for validation (deterministic
    per seed); ``test_size`` enlarges MNIST-1D's test set with more signals from its generator.
    """

    optimizer: str = "xsam"
    dataset: str = "mnist1d"
    model: str | None = None
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    rho: float | None = None
    rho_max: float | None = None
    adaptive: bool = False
    ascent_steps: int = 1
    search_every: int | None = None
    xsam_reuse: str = "alpha"
    max_rotation: float | None = None
    gsam_alpha: float = 0.4
    wsam_gamma: float = 0.9
    fsam_sigma: float = 1.0
    fsam_lambda: float = 0.9
    vasso_theta: float = 0.9
    fisher_eta: float = 1.0
    looksam_every: int = 5
    looksam_alpha: float = 0.7
    perturbation_mask: str | None = None
    late_phase_start: float | None = None
    perturb_every: int | None = None
    perturb_probability: float | None = None
    m_sharpness: int | None = None
    devices: int = 1
    augment: bool | None = None
    val_fraction: float | None = None
    test_size: int | None = None
    seed: int = 0
    data_dir: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        alias = ALIASES.get(self.optimizer)
        if alias is not None:
            self.optimizer = alias["optimizer"]
            self.adaptive = alias.get("adaptive", self.adaptive)
            if self.late_phase_start is None:
                self.late_phase_start = alias.get("late_phase_start")

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TrainConfig:
        """A config saved by this or an earlier version (unknown fields are an error).

        Earlier versions stored ``late_phase_start`` for every run and used it for
        ``optimizer="late-sam"`` only; for the others it meant nothing and is dropped.
        """
        fields = dict(fields)
        if fields.get("optimizer") != "late-sam" and "adaptive" not in fields:
            fields.pop("late_phase_start", None)
        try:
            return cls(**fields)
        except TypeError as err:
            raise ValueError(f"not a TrainConfig of this version ({err})") from None

    def validate(self) -> None:
        """InvalidArgumentError (a ValueError) naming the flag of the first bad field."""
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_choice("--dataset", self.dataset, data.available())
        if self.model is not None:
            check_choice("--model", self.model, models.available())
        for name in ("epochs", "batch_size", "ascent_steps", "devices", "looksam_every"):
            check_int(flag(name), getattr(self, name), low=1)
        check_range("--lr", self.lr, low=0.0, low_open=True)
        check_range("--momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_range("--weight-decay", self.weight_decay, low=0.0)
        check_range("--gsam-alpha", self.gsam_alpha, low=0.0)
        check_range("--wsam-gamma", self.wsam_gamma, low=0.0, high=1.0, high_open=True)
        check_range("--fsam-sigma", self.fsam_sigma, low=0.0)
        check_range("--fsam-lambda", self.fsam_lambda, low=0.0, high=1.0)
        check_range("--vasso-theta", self.vasso_theta, low=0.0, high=1.0)
        check_range("--fisher-eta", self.fisher_eta, low=0.0)
        check_range("--looksam-alpha", self.looksam_alpha, low=0.0)
        if self.perturbation_mask is not None:
            check_choice("--perturbation-mask", self.perturbation_mask, PERTURBATION_MASKS)
        if self.optimizer == "fisher-sam" and self.adaptive:
            raise InvalidArgumentError(
                "--adaptive", "unset with --optimizer fisher-sam (its ball is the Fisher's)", True
            )
        # Fields whose None means "the default": checked when set (flags are never None).
        optional_checks = {
            "search_every": lambda v: check_int("--search-every", v, low=0),
            "rho": lambda v: check_range("--rho", v, low=0.0),
            "rho_max": lambda v: check_range("--rho-max", v, low=0.0),
            "late_phase_start": lambda v: check_range("--late-phase-start", v, low=0.0, high=1.0),
            "perturb_every": lambda v: check_int("--perturb-every", v, low=1),
            "perturb_probability": lambda v: check_range(
                "--perturb-probability", v, low=0.0, high=1.0, low_open=True
            ),
            "val_fraction": lambda v: check_range(
                "--val-fraction", v, low=0.0, high=1.0, low_open=True, high_open=True
            ),
            "test_size": lambda v: check_int("--test-size", v, low=1000),
            "max_rotation": lambda v: check_range(
                "--max-rotation", v, low=0.0, high=180.0, low_open=True
            ),
        }
        for name, check in optional_checks.items():
            if getattr(self, name) is not None:
                check(getattr(self, name))
        check_choice("--xsam-reuse", self.xsam_reuse, ("alpha", "rotation"))
        if self.optimizer != "xsam":
            for name, default in (("xsam_reuse", "alpha"), ("max_rotation", None)):
                if getattr(self, name) != default:
                    raise InvalidArgumentError(
                        flag(name), "unset unless --optimizer xsam", getattr(self, name)
                    )
        if self.test_size is not None and self.dataset != "mnist1d":
            raise InvalidArgumentError(
                "--test-size",
                f"unset for --dataset {self.dataset} (only mnist1d can make more)",
                self.test_size,
            )
        check_int("--seed", self.seed, low=0)
        if self.perturb_probability is not None:
            if self.perturb_every is not None:
                raise InvalidArgumentError(
                    "--perturb-probability", "unset with --perturb-every", self.perturb_probability
                )
            # The seed also seeds the steps' draws (`xsam_jax.randomized`).
            check_int("--seed", self.seed, low=0, high=2**32 - 1)
        if self.optimizer == "sgd":
            for name in (
                "adaptive",
                "late_phase_start",
                "perturb_every",
                "perturb_probability",
                "m_sharpness",
                "perturbation_mask",
            ):
                if getattr(self, name) not in (None, False):
                    raise InvalidArgumentError(
                        flag(name),
                        "unset with --optimizer sgd (it modifies a sharpness-aware method)",
                        getattr(self, name),
                    )
        if self.batch_size % self.devices:
            raise InvalidArgumentError(
                "--batch-size", f"divisible by --devices ({self.devices})", self.batch_size
            )
        if self.m_sharpness is not None:
            self._validate_m_sharpness(self.m_sharpness)

    def _validate_m_sharpness(self, m_sharpness: int) -> None:
        check_int("--m-sharpness", m_sharpness, low=1)
        per_device = self.batch_size // self.devices
        if self.devices > 1 and m_sharpness != per_device:
            raise InvalidArgumentError(
                "--m-sharpness",
                f"--batch-size / --devices = {per_device} with --devices > 1 (it is per device)",
                m_sharpness,
            )
        if self.batch_size % m_sharpness:
            raise InvalidArgumentError(
                "--m-sharpness", f"a divisor of --batch-size ({self.batch_size})", m_sharpness
            )

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL[self.dataset]

    def resolved(self) -> TrainConfig:
        """A copy with the model and the radii filled in: what a run stores and compares."""
        rho, rho_max = default_radii(self)
        return dataclasses.replace(self, model=self.model_name, rho=rho, rho_max=rho_max)


def default_radii(config: TrainConfig) -> tuple[float | None, float | None]:
    """The ascent radius ρ and XSAM's probe radius ρ_max of a run, None where it has none.

    A radius given in the config wins. Otherwise the study's choice for the config's dataset
    and model (`TUNED_RADII`) if it measured that setting, else the papers' (`PAPER_RHO`,
    ASAM's 0.5 for adaptive ascents; XSAM's ρ_max = 2ρ). SGD has neither.
    """
    if config.optimizer == "sgd":
        return None, None
    tuned = TUNED_RADII.get((config.dataset, config.model_name), {})
    key = config.optimizer + ("+adaptive" if config.adaptive else "")
    found = tuned.get(key, {})
    paper = PAPER_RHO_ADAPTIVE if config.adaptive else PAPER_RHO[config.optimizer]
    rho = config.rho if config.rho is not None else found.get("rho", paper)
    if config.optimizer != "xsam":
        return rho, None
    if config.rho_max is not None:
        return rho, config.rho_max
    if "rho_max" in found and config.rho is None:
        return rho, found["rho_max"]
    # The XSAM authors probe at twice the ascent radius (0.15 / 0.3); with an adaptive ascent
    # ρ lives in the rescaled space, so the probe radius falls back to theirs.
    return rho, PAPER_RHO["xsam"] * 2 if config.adaptive else 2 * rho


# Variant modifiers of the cheaper schedules: name -> (field, type, what a bad value is told).
_SCHEDULE_MODIFIERS = {
    "every": ("perturb_every", int, "+every=N needs a whole number of steps N"),
    "random": ("perturb_probability", float, "+random=P needs a probability P"),
}


def parse_variant(text: str) -> dict[str, Any]:
    """The config fields of a variant label ``method[+adaptive][+late=F][+rotation][+cap=D]``
    with at most one of ``[+every=N]`` and ``[+random=P]``.

    Args:
      text: e.g. ``"xsam"``, ``"asam"``, ``"xsam+adaptive"``, ``"sam+late=0.75"``,
        ``"xsam+late"`` (the late phase of `ALIASES`, from 80 % of training),
        ``"xsam+rotation"`` (XSAM reusing the searched angle), ``"xsam+cap=30"`` (XSAM turning
        at most 30 degrees from v0), ``"sam+every=2"`` (SAM on every second step, SGD steps
        between), ``"sam+random=0.5"`` (SAM on a random half of the steps).

    Returns:
      The fields it sets: ``optimizer`` and possibly ``adaptive``, ``late_phase_start``,
      ``xsam_reuse``, ``max_rotation``, ``perturb_every`` and ``perturb_probability``.

    Raises:
      ValueError: for an unknown method or modifier, naming the allowed ones.
    """
    name, *modifiers = text.split("+")
    if name not in OPTIMIZERS:
        raise ValueError(
            f"unknown method {name!r} in {text!r}; choose from "
            f"{', '.join(OPTIMIZERS)} with modifiers +adaptive, +late=F, +every=N, +random=P, "
            "+rotation, +cap=D"
        )
    fields: dict[str, Any] = {"optimizer": name}
    for modifier in modifiers:
        key, _, value = modifier.partition("=")
        if key == "adaptive" and not value:
            fields["adaptive"] = True
        elif key == "rotation" and not value:
            fields["xsam_reuse"] = "rotation"
        elif key == "cap":
            try:
                fields["max_rotation"] = float(value)
            except ValueError:
                message = f"+cap=D needs an angle D in degrees, got {modifier!r} in {text!r}"
                raise ValueError(message) from None
        elif key in _SCHEDULE_MODIFIERS:
            field, kind, needs = _SCHEDULE_MODIFIERS[key]
            try:
                fields[field] = kind(value)
            except ValueError:
                raise ValueError(f"{needs}, got {modifier!r} in {text!r}") from None
        elif key == "late":
            try:
                fields["late_phase_start"] = float(value) if value else 0.8
            except ValueError:
                message = f"+late=F needs a fraction F, got {modifier!r} in {text!r}"
                raise ValueError(message) from None
        else:
            raise ValueError(
                f"unknown modifier {modifier!r} in {text!r}; use +adaptive, +late=F, "
                "+every=N, +random=P, +rotation or +cap=D"
            )
    return fields
