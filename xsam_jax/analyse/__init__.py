r"""`xsam-analyse`: sharpness and landscape report of a run saved by `xsam-train --out DIR`.

``xsam-analyse run DIR`` restores the final state of the run in ``DIR`` (``DIR/checkpoint``, its
config rebuilds the data and the model) and measures, on a seeded random subset of the
training set (no augmentation), with the train-mode loss that training minimised (BatchNorm
normalises with the statistics of each batch; its running statistics are left untouched,
`xsam_jax.sharpness.nnx_loss_fn`):

- the top-3 Hessian eigenvalues :math:`\lambda_1 \ge \lambda_2 \ge \lambda_3` by Lanczos on
  Hessian-vector products (Ghorbani et al. 2019; PyHessian, Yao et al. 2020), the sharpness
  measure of the late-phase SAM paper (Zhou et al., ICLR 2025), and Hutchinson's estimate of
  :math:`\operatorname{tr} H` with its standard error;
- Proposition 1 of XSAM (Chen & Zhou, ICLR 2026): with :math:`g_0 = \nabla L(\theta)` and
  SAM's :math:`g_1 = \nabla L(\theta + \rho\, g_0/\|g_0\|)`, the ratio and the difference of
  :math:`L(\theta + \rho_m g_1/\|g_1\|)` and :math:`L(\theta + \rho_m g_0/\|g_0\|)` at
  :math:`\rho_m = \rho_{\max}` (and the two curves over a few radii);
- XSAM's α curve :math:`\alpha \mapsto L(\theta + \rho_{\max} v(\alpha))` and its argmax α*.

It writes ``analysis.json`` (every number, the settings and the run's config),
``alpha_curve.png``, ``proposition1.png`` and, for XSAM runs, ``alpha_per_epoch.png`` (the α*
the run selected each epoch).

``xsam-analyse valley DIR_A DIR_B`` evaluates the linear path
:math:`\theta(\lambda) = (1-\lambda)\theta_A + \lambda\theta_B`, λ ∈ [−0.2, 1.2], in eval mode
with interpolated BatchNorm running statistics (as the late-phase paper's ``LMC.py`` does): train
and test loss and accuracy on seeded random train and test examples, and the second
differences of the train loss, :math:`[L(\lambda+h) - 2L(\lambda) + L(\lambda-h)]/h^2
\approx d^\top \nabla^2 L\, d` with :math:`d = \theta_B - \theta_A`: no barrier between the
endpoints and a smaller curvature at one end is Zhou et al.'s valley picture (the SGD and the
late-SAM solutions lie in one valley, SAM's end the flatter). It writes ``interpolation.json``
and ``interpolation.png``.

Both are functions too (`analyse`, `compare`) returning the JSON-ready dicts. The package
keeps the concerns apart: `xsam_jax.analyse.compute` measures (plain dicts of numbers),
`xsam_jax.analyse.reports` formats the text and writes the JSON and the figures, and
`xsam_jax.analyse.cli` is the command line (`main`). The old forms ``xsam-analyse DIR`` and
``xsam-analyse --compare DIR_A DIR_B`` still work, with a deprecation notice.

References:
  Chen & Zhou, Revisiting Sharpness-Aware Minimization: A More Faithful and Effective
  Implementation, ICLR 2026.
  Zhou, Wang, Mao, Li, Yan, Sharpness-Aware Minimization Efficiently Selects Flatter Minima
  Late in Training, ICLR 2025.
  Ghorbani, Krishnan, Xiao, An Investigation into Neural Net Optimization via Hessian
  Eigenvalue Density, ICML 2019.
  Yao, Gholami, Keutzer, Mahoney, PyHessian: Neural Networks Through the Lens of the
  Hessian, IEEE BigData 2020.
"""

from __future__ import annotations

import pathlib
from typing import Any

from xsam_jax.analyse import compute, reports
from xsam_jax.analyse.cli import build_parser, main
from xsam_jax.analyse.compute import NUM_EIGENVALUES
from xsam_jax.analyse.reports import format_comparison, format_report


def analyse(
    run_dir: str | pathlib.Path,
    *,
    examples: int = 1000,
    trace_samples: int = 50,
    num_iters: int = 20,
    k: int = NUM_EIGENVALUES,
    rho: float | None = None,
    rho_max: float | None = None,
    seed: int = 0,
    chunk: int | None = 8,
    out: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Sharpness report of a saved run; writes ``analysis.json`` and figures into ``out``.

    Every measure uses the same loss, the mean cross-entropy over ``examples`` random training
    examples (seeded, no augmentation) in equal batches of at most the run's batch size, in
    train mode (BatchNorm with the statistics of each batch, running statistics untouched):

    - ``hessian.eigenvalues``: the top-k eigenvalues of :math:`\nabla^2 L(\theta)` by ``num_iters``
      Lanczos steps (`xsam_jax.sharpness.hessian_eigenvalues`); λ_1 is λ_max.
    - ``hessian.trace``: :math:`\frac1N \sum_i z_i^\top H z_i` over N = ``trace_samples``
      Rademacher probes (Hutchinson 1989) and its standard error.
    - ``proposition1``: at :math:`\rho_m = \rho_{\max}`, :math:`L_1 = L(\theta + \rho_m
      g_1/\|g_1\|)` and :math:`L_0 = L(\theta + \rho_m g_0/\|g_0\|)`, their ratio
      :math:`L_1/L_0` and difference :math:`L_1 - L_0` (Chen & Zhou, ICLR 2026, Prop. 1, a
      second-order argument: for large enough ρ_m, L_1 > L_0, and some direction between
      g_0 and g_1 or beyond g_1 climbs higher still, which the α curve probes), and both
      curves over radii ρ_max·{0.25, 0.5, 1, 1.5, 2} and ρ.
    - ``alpha_curve``: :math:`L(\theta + \rho_{\max} v(\alpha))` on XSAM's grid α = 0, 0.1,
      ..., 2 and its argmax α* (α = 1 is SAM's direction), `xsam_jax.landscape.alpha_curve`.

    ρ and ρ_max default to the run's (ρ_max = 2ρ unless an XSAM run set it); runs without a
    Euclidean ρ (SGD, ASAM) fall back to ρ = 0.05.

    Args:
      run_dir: the directory of `xsam-train --out DIR`.
      examples: training examples to measure on (capped at the training set), >= 1.
      trace_samples: Hutchinson probes, >= 2.
      num_iters: Lanczos steps, >= k.
      k: number of top eigenvalues, >= 1.
      rho: ascent radius defining g_1 (None: the run's).
      rho_max: probe radius ρ_m of Proposition 1 and of the α curve (None: the run's or 2ρ).
      seed: seeds the subset, the Lanczos start vector and the probes.
      chunk: loss evaluations vmapped at once in the α curve and Proposition 1 (None: all).
      out: output directory (None: ``run_dir/analysis``).
      progress: print the stages and their wall times on stderr.

    Returns:
      The contents of ``analysis.json``.

    Raises:
      FileNotFoundError: no run in ``run_dir``.
      InvalidArgumentError: a bad argument (a ValueError; ρ and ρ_max must be > 0 here).
      CheckpointUnreadableError: no checkpoint of the run can be read (a ValueError).
    """
    run_dir = pathlib.Path(run_dir)
    stages = compute.Progress(progress)
    result = compute.sharpness_of_run(
        run_dir,
        examples=examples,
        trace_samples=trace_samples,
        num_iters=num_iters,
        k=k,
        rho=rho,
        rho_max=rho_max,
        seed=seed,
        chunk=chunk,
        stages=stages,
    )
    out = run_dir / "analysis" if out is None else pathlib.Path(out)
    with stages.stage("figures", f"writing {out}"):
        reports.write_analysis(result, out, compute.read_history(run_dir))
    return result


def compare(
    dir_a: str | pathlib.Path,
    dir_b: str | pathlib.Path,
    *,
    examples: int = 1000,
    num: int = 29,
    seed: int = 0,
    chunk: int | None = 8,
    out: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Loss and accuracy on the line through two runs' solutions (the valley test).

    Evaluates :math:`\theta(\lambda) = (1-\lambda)\theta_A + \lambda\theta_B` at ``num``
    uniform λ in [−0.2, 1.2] (step 0.05 for the default 29, so λ = 0 and 1 are θ_A and θ_B)
    in eval mode, the BatchNorm running statistics interpolated likewise (Zhou et al., ICLR
    2025, ``LMC.py``): train and test loss and accuracy on ``examples`` random train and test
    examples (seeded, no augmentation, from run A's data), and the second differences
    :math:`\Delta^2 L(\lambda) = [L(\lambda+h) - 2L(\lambda) + L(\lambda-h)]/h^2 \approx
    d^\top \nabla^2 L(\theta(\lambda))\, d`, :math:`d = \theta_B - \theta_A`, at the interior
    points (`xsam_jax.landscape.interpolate`). The barrier is
    :math:`\max_{\lambda \in [0, 1]} L(\lambda) - \max(L(0), L(1))`: about 0 when both
    solutions lie in one valley.

    Args:
      dir_a: run A (λ = 0), the directory of `xsam-train --out DIR`.
      dir_b: run B (λ = 1), with the same model and dataset.
      examples: train and test examples each (capped at the split sizes), >= 1.
      num: grid points, >= 3.
      seed: seeds the examples.
      chunk: λ points evaluated at once (None: all).
      out: output directory (None: ``dir_a/analysis/interpolation_<name of dir_b>``).
      progress: print the stages and their wall times on stderr.

    Returns:
      The contents of ``interpolation.json``.

    Raises:
      FileNotFoundError: no run in a directory.
      InvalidArgumentError: a bad argument (a ValueError).
      ValueError: runs of different models or datasets.
    """
    dir_a, dir_b = pathlib.Path(dir_a), pathlib.Path(dir_b)
    stages = compute.Progress(progress)
    result = compute.valley_between_runs(
        dir_a, dir_b, examples=examples, num=num, seed=seed, chunk=chunk, stages=stages
    )
    if out is None:
        out = dir_a / "analysis" / f"interpolation_{dir_b.resolve().name}"
    out = pathlib.Path(out)
    with stages.stage("figures", f"writing {out}"):
        reports.write_interpolation(result, out)
    return result


__all__ = ["analyse", "build_parser", "compare", "format_comparison", "format_report", "main"]
