"""Fisher SAM (Kim et al. 2022): the SAM ball measured in a diagonal Fisher metric."""

from __future__ import annotations

from typing import Any

import optax

from xsam_jax._src.base import Method, shared_options, sharpness_aware
from xsam_jax._src.validation import check_range


def fisher_sam(
    rho: float | optax.Schedule = 0.1,
    eta: float = 1.0,
    *,
    ascent_steps: int | None = None,
    eps: float = 1e-12,
    axis_name: str | None = None,
    local_perturbation: bool = False,
    perturbation_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Fisher SAM: the worst point in an ellipsoid shaped by the Fisher information.

    The loss of a network is a log-likelihood, so its parameter space is better measured by
    the Fisher information than by the Euclidean norm. Fisher SAM (Kim et al. 2022) replaces
    SAM's ball by :math:`\{\epsilon : \epsilon^\top f\, \epsilon \le \rho^2\}` with the
    diagonal metric :math:`f = 1 + \eta\, g \odot g`, whose first-order worst point is

    .. math::
      \epsilon = \rho\, \frac{f^{-1} g}{\sqrt{g^\top f^{-1} g}},

    and outputs the gradient at :math:`\theta + \epsilon`, as SAM does. So directions in
    which the batch gradient is large (the model is sensitive) get a shorter perturbation.
    η = 0 is `sam`.

    The reading implemented: the diagonal Fisher in :math:`f` is estimated by the squared
    minibatch gradient :math:`g \odot g` of the same step (no extra pass, no running
    average). No official code is published and we could not check the paper's text on this
    point; it is the cheap estimate the unofficial PyTorch implementations we read use, and
    it keeps the method at SAM's cost. With ``ascent_steps`` k > 1 each of the k steps is
    this step, of length ρ/k, for the gradient (and its f) at its point.

    Args:
      rho: the radius ρ ≥ 0 of the Fisher ball, the paper's γ (float or schedule). The
        defaults ρ = 0.1 and η = 1 are an unofficial implementation's.
      eta: η ≥ 0, the weight of the Fisher term in the metric.
      ascent_steps, eps, axis_name, local_perturbation, perturbation_mask: as in `sam`. With a
        mask, f, the norm and the perturbation run over the selected leaves only.

    Returns:
      An `optax.GradientTransformationExtraArgs` with state `SAMState` (needs ``loss_fn``,
      takes ``perturb``; see `sam`).

    Examples:
      On :math:`L(w) = \tfrac12\|w\|^2` at w = (1, 4), g = (1, 4) and with η = 0.25,
      f = 1 + 0.25·(1, 16) = (1.25, 5), so f⁻¹g = (0.8, 0.8), gᵀf⁻¹g = 4 and
      ε = 0.5·(0.8, 0.8)/2 = (0.2, 0.2): both coordinates move alike, where SAM's
      ε = 0.5·(1, 4)/√17 moves the steep one four times as far. The output is the gradient
      at w + ε, that point itself:

      >>> import jax, jax.numpy as jnp
      >>> import xsam_jax as xs
      >>> def loss(w):
      ...     return 0.5 * jnp.sum(w**2)
      >>> w = jnp.array([1.0, 4.0])
      >>> tx = xs.fisher_sam(rho=0.5, eta=0.25)
      >>> updates, _ = tx.update(jax.grad(loss)(w), tx.init(w), w, loss_fn=loss)
      >>> [round(float(v), 4) for v in updates]  # w + [0.2, 0.2]
      [1.2, 4.2]

    References:
      Kim, Li, Hu & Hospedales, `Fisher SAM: Information Geometry and Sharpness Aware
      Minimisation <https://arxiv.org/abs/2206.04920>`_, ICML 2022.
    """
    check_range("eta", eta, low=0.0)
    # `eta` is the Fisher weight here, not ASAM's η, which this method does not offer.
    arguments = {name: value for name, value in locals().items() if name != "eta"}
    options = shared_options(arguments, fisher_eta=eta)
    return sharpness_aware(Method("fisher_sam"), rho, options)
