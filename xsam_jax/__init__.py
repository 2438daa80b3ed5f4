"""xsam_jax: sharpness-aware minimisation as composable Optax transformations.

Every method turns the clean gradient into a sharpness-aware one and is chained before the
base optimizer (`wsam_decoupled`, which needs the learning rate, wraps it instead)::

    tx = optax.chain(xsam_jax.xsam(rho=0.15, rho_max=0.3, search_every=steps_per_epoch),
                     optax.add_decayed_weights(1e-3), optax.sgd(lr, momentum=0.9))
    updates, state = tx.update(grads, state, params, loss_fn=lambda p: loss(p, batch))

Submodules (imported on demand): `xsam_jax.training` (Flax NNX train steps, data parallelism,
checkpoints), `xsam_jax.models`, `xsam_jax.data`, `xsam_jax.sharpness` (Hessian spectra and
trace), `xsam_jax.landscape` (Proposition 1, α curves, interpolation, surfaces),
`xsam_jax.plotting`, `xsam_jax.experiment` (what `xsam-train` runs) and `xsam_jax.analyse`
(what `xsam-analyse` runs).
"""

from xsam_jax._src.base import SAMState
from xsam_jax._src.fisher_sam import fisher_sam
from xsam_jax._src.gsam import gsam
from xsam_jax._src.looksam import LookSAMState, looksam
from xsam_jax._src.moving_average import MovingAverageState, fsam, vasso
from xsam_jax._src.sam import asam, sam
from xsam_jax._src.schedules import (
    late_phase,
    periodic,
    perturbed_steps,
    randomized,
    search_steps,
)
from xsam_jax._src.slerp import alpha_grid, slerp_coefficients
from xsam_jax._src.wsam import WSAMDecoupledState, wsam, wsam_decoupled
from xsam_jax._src.xsam import XSAMState, xsam

__version__ = "0.1.0"

__all__ = [
    "LookSAMState",
    "MovingAverageState",
    "SAMState",
    "WSAMDecoupledState",
    "XSAMState",
    "alpha_grid",
    "asam",
    "fisher_sam",
    "fsam",
    "gsam",
    "late_phase",
    "looksam",
    "periodic",
    "perturbed_steps",
    "randomized",
    "sam",
    "search_steps",
    "slerp_coefficients",
    "vasso",
    "wsam",
    "wsam_decoupled",
    "xsam",
]
