"""Runs from a flat config: what `xsam-train` and the study (`xsam-study`) call.

- `config`: `TrainConfig` (everything one run depends on), the method names and variants
  (``xsam+adaptive``, ``sam+late=0.75``) and their default radii;
- `optimizers`: the Optax chain of a run, its ρ schedule, which steps perturb, what it costs;
- `train`: `run(config)` trains with a progress bar, evaluates every epoch and, with `out`,
  writes `metrics.json`, `curves.png` and Orbax checkpoints that `resume` continues
  bit-exactly; `load_run` restores what a run saved;
- `recipes`: the papers' setups by name (`RECIPES`, `recipe_config`; `xsam-train --recipe`);
- `compare`: side-by-side variants over seeds, with 95 % intervals and paired differences;
- `launch`: joining the other processes of a run on several hosts (`jax.distributed`).
"""

from xsam_jax.experiment.compare import format_table, summarise, write_comparison
from xsam_jax.experiment.config import (
    ALIASES,
    DEFAULT_MODEL,
    METHODS,
    OPTIMIZERS,
    PAPER_RHO,
    PAPER_RHO_ADAPTIVE,
    PERTURBATION_MASKS,
    TUNED_RADII,
    TrainConfig,
    default_radii,
    parse_variant,
)
from xsam_jax.experiment.optimizers import (
    cost,
    make_optimizer,
    perturb_plan,
    rho_schedule,
    search_plan,
)
from xsam_jax.experiment.recipes import RECIPES, Recipe, format_recipes, recipe_config
from xsam_jax.experiment.train import (
    current_alpha,
    current_xsam_state,
    load_run,
    run,
)

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "METHODS",
    "OPTIMIZERS",
    "PAPER_RHO",
    "PAPER_RHO_ADAPTIVE",
    "PERTURBATION_MASKS",
    "RECIPES",
    "Recipe",
    "TUNED_RADII",
    "TrainConfig",
    "cost",
    "current_alpha",
    "current_xsam_state",
    "default_radii",
    "format_recipes",
    "format_table",
    "load_run",
    "make_optimizer",
    "parse_variant",
    "perturb_plan",
    "recipe_config",
    "rho_schedule",
    "run",
    "search_plan",
    "summarise",
    "write_comparison",
]
