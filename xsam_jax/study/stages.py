"""The study's stages: tune on validation, then final, multi-step and late-phase runs.

Each stage turns the plan into jobs (`runs.Job`), lets `runs.execute` train what is not
cached yet, and condenses the results into plain JSON: per run its final accuracies, cost and
diagnostics, and for final runs the per-epoch curves the figures need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from xsam_jax.experiment import TrainConfig
from xsam_jax.study.runs import Cache, Job, execute
from xsam_jax.study.spec import Method, Plan, Setting

RUN_FIELDS = (
    "final_train_accuracy",
    "final_val_accuracy",
    "final_test_accuracy",
    "seconds",
    "gradient_evaluations",
    "probe_evaluations",
    "lambda_max",
    "hessian_trace",
    "hessian_trace_stderr",
)
CURVES = (
    "test_accuracy",
    "val_accuracy",
    "train_loss",
    "alpha",
    "cos_psi",
    "rotation_degrees",
    "proposition1_ratio",
)


def config_for(
    setting: Setting, method: Method, params: dict[str, Any], seed: int, **extra: Any
) -> TrainConfig:
    return TrainConfig(**setting.fields(), **method.fields, **params, seed=seed, **extra)


def condense(result: dict[str, Any], *, curves: bool) -> dict[str, Any]:
    """The parts of an `experiment.run` result the study keeps."""
    summary = {"config": {"seed": result["config"]["seed"]}}
    summary |= {k: result[k] for k in RUN_FIELDS if k in result}
    if curves:
        history = result["history"]
        summary["curves"] = {k: [h.get(k) for h in history] for k in CURVES if k in history[0]}
    return summary


class Study:
    """Runs the stages of a `Plan` against a `Cache`."""

    def __init__(
        self,
        plan: Plan,
        cache: Cache,
        *,
        workers: int = 1,
        jit_cache: str | None = None,
        log: Callable[[str], None] = print,
    ):
        self.plan, self.cache, self.log = plan, cache, log
        self.options: dict[str, Any] = {"workers": workers, "jit_cache": jit_cache, "log": log}

    def _run(self, jobs: list[Job]) -> dict[str, dict[str, Any]]:
        return execute(jobs, self.cache, **self.options)

    def tune(self) -> dict[str, dict[str, Any]]:
        """Per setting and method: every grid point's validation accuracies and the choice.

        The choice is the grid point with the highest mean final validation accuracy over the
        tuning seeds (the first such point on ties). The test split is never read.
        """
        jobs = {}
        for setting in self.plan.settings:
            for method in self.plan.methods:
                for i, params in enumerate(method.grid):
                    for seed in self.plan.tuning_seeds:
                        job = Job(config_for(setting, method, params, seed), test=False)
                        jobs[setting.name, method.label, i, seed] = job
        self.log(f"tuning: {len(jobs)} runs on validation data")
        results = self._run(list(jobs.values()))
        tuning: dict[str, dict[str, Any]] = {}
        for setting in self.plan.settings:
            for method in self.plan.methods:
                points: list[dict[str, Any]] = []
                for i, params in enumerate(method.grid):
                    accuracies = [
                        results[jobs[setting.name, method.label, i, s].key()]["final_val_accuracy"]
                        for s in self.plan.tuning_seeds
                    ]
                    points.append(
                        {
                            "params": params,
                            "val_accuracies": accuracies,
                            "mean_val_accuracy": float(np.mean(accuracies)),
                        }
                    )
                best = int(np.argmax([p["mean_val_accuracy"] for p in points]))
                tuning.setdefault(setting.name, {})[method.label] = {
                    "points": points,
                    "choice": points[best]["params"],
                }
        return tuning

    def final(self, tuning: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each method at its chosen point on the final seeds, test set and diagnostics.

        The plan's references (untuned, a single point) run alike, after the methods.
        """

        def choice(setting: Setting, method: Method) -> dict[str, Any]:
            if method in self.plan.references:
                return method.grid[0]
            return tuning[setting.name][method.label]["choice"]

        jobs = {
            (setting.name, method.label, seed): (
                choice(setting, method),
                Job(
                    config_for(setting, method, choice(setting, method), seed),
                    test=True,
                    diagnostics=True,
                ),
            )
            for setting in self.plan.settings
            for method in self.plan.methods + self.plan.references
            for seed in self.plan.final_seeds
        }
        self.log(f"final: {len(jobs)} runs")
        results = self._run([job for _, job in jobs.values()])
        final: dict[str, dict[str, Any]] = {}
        for (setting, label, _), (params, job) in jobs.items():
            entry = final.setdefault(setting, {}).setdefault(label, {"params": params, "runs": []})
            entry["runs"].append(condense(results[job.key()], curves=True))
        return final

    def _variants(self, setting_name: str, labels, tuning, final, variants: dict) -> dict:
        """Methods at their tuned points with extra fields: label -> variant name -> runs.

        The variant None is the method as in the final runs, whose results it reuses.
        """
        setting = self.plan.setting(setting_name)
        jobs = {}
        for label in labels:
            method = self.plan.method(label)
            params = tuning[setting_name][label]["choice"]
            for name, extra in variants.items():
                for seed in self.plan.final_seeds:
                    if extra is not None:
                        config = config_for(setting, method, params, seed, **extra)
                        jobs[label, name, seed] = Job(config, test=True)
        results = self._run(list(jobs.values()))
        out: dict[str, dict[str, list]] = {}
        for label in labels:
            for name, extra in variants.items():
                if extra is None:
                    runs = [
                        {k: v for k, v in run.items() if k != "curves"}
                        for run in final[setting_name][label]["runs"]
                    ]
                else:
                    runs = [
                        condense(results[jobs[label, name, seed].key()], curves=False)
                        for seed in self.plan.final_seeds
                    ]
                out.setdefault(label, {})[str(name)] = runs
        return out

    def multistep(self, tuning: dict, final: dict) -> dict[str, Any]:
        """SAM and XSAM with k ascent steps (ρ the total length); k = 1 is the final runs."""
        self.log("multi-step ascent")
        variants = {k: None if k == 1 else {"ascent_steps": k} for k in self.plan.ascent_steps}
        return self._variants(
            self.plan.multistep_setting, self.plan.multistep_methods, tuning, final, variants
        )

    def late_phase(self, tuning: dict, final: dict) -> dict[str, Any]:
        """SGD, then the method from fraction F of training on; F = 0 is the final runs."""
        self.log("late phase")
        variants = {0.0: None} | {f: {"late_phase_start": f} for f in self.plan.late_starts}
        return self._variants(
            self.plan.late_setting, self.plan.late_methods, tuning, final, variants
        )


def plan_description(plan: Plan) -> dict[str, Any]:
    """The plan as JSON: settings, grids, seeds (so the results say what they measured)."""
    return {
        "settings": [dataclasses.asdict(s) | {"name": s.name} for s in plan.settings],
        "methods": {m.label: {"fields": m.fields, "grid": list(m.grid)} for m in plan.methods},
        "references": {m.label: {"fields": m.fields, "params": m.grid[0]} for m in plan.references},
        "tuning_seeds": list(plan.tuning_seeds),
        "final_seeds": list(plan.final_seeds),
        "multistep": {
            "setting": plan.multistep_setting,
            "methods": list(plan.multistep_methods),
            "ascent_steps": list(plan.ascent_steps),
        },
        "late_phase": {
            "setting": plan.late_setting,
            "methods": list(plan.late_methods),
            "starts": list(plan.late_starts),
        },
    }
