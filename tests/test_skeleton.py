"""The skeleton every method runs (`_src/base.py`): shared options and the method record.

The method record's hooks are exercised here by a method with its own state, updated on every
step, that steers the ascent (a VaSSO-like average of gradients), against a NumPy
re-derivation: the shape of the methods the skeleton must carry without being rewritten.
"""

import dataclasses
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W0, dual, grad_np, loss_jax, to_tree, to_vec

import xsam_jax as xs
from xsam_jax._src import ascent, base, tree_math
from xsam_jax._src.parallel import Averaging

FACTORIES = [
    xs.sam,
    xs.asam,
    xs.gsam,
    xs.wsam,
    xs.wsam_decoupled,
    xs.xsam,
    xs.fsam,
    xs.vasso,
    xs.fisher_sam,
    xs.looksam,
]
# Arguments a factory names like a shared option but means otherwise: Fisher SAM's η.
OWN = {"fisher_sam": {"eta"}}


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_factories_list_the_shared_options_with_one_set_of_defaults(factory):
    """Each public signature spells the shared options out; their defaults must agree."""
    shared = {
        name: p.default for name, p in inspect.signature(ascent.make_config).parameters.items()
    }
    shared |= {f.name: f.default for f in dataclasses.fields(Averaging)}
    params = inspect.signature(factory).parameters
    offered = [
        name for name in shared if name in params and name not in OWN.get(factory.__name__, ())
    ]
    assert {"ascent_steps", "eps", "axis_name", "local_perturbation", "perturbation_mask"} <= set(
        offered
    )
    for name in offered:
        assert params[name].default == shared[name], name


class AverageState(NamedTuple):
    count: jax.Array
    average: dict


def averaged_gradient_method(theta):
    """Ascends along d = (1 − θ)·d + θ·g0 (d = g0 on the first step), updated on every step."""

    def init(params):
        return AverageState(jnp.zeros([], jnp.int32), tree_math.combine([0.0], [params], params))

    def average(g0, state):
        weight = jnp.where(state.count == 0, 1.0, theta)
        return tree_math.combine([1.0 - weight, weight], [state.average, g0], like=g0)

    def output(climb, state, step):
        del step
        return climb.g_k, state._replace(average=average(climb.g0, state))

    def clean(g0, state):
        return g0, state._replace(average=average(g0, state))

    return base.Method("averaged", output, init, ascent_start=average, clean=clean)


def test_a_method_with_state_that_steers_the_ascent():
    rho, theta, lr, steps = 0.1, 0.4, 0.05, 5
    schedule = lambda count: jnp.where(count == 2, 0.0, rho)  # step 2 takes no ascent
    method = averaged_gradient_method(theta)
    options = base.shared_options({"ascent_steps": 2})
    tx = optax.chain(base.sharpness_aware(method, schedule, options), optax.sgd(lr))
    params = to_tree(W0)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss_jax)(p), s, p, loss_fn=loss_jax))
    w, d = W0.copy(), None
    for t in range(steps):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        g0 = grad_np(w)
        d = g0 if d is None else (1 - theta) * d + theta * g0
        if t == 2:
            direction = g0
        else:  # two steps of length rho/2, the first along d
            chord = rho / 2 * dual(d, 2.0)
            chord = chord + rho / 2 * dual(grad_np(w + chord), 2.0)
            direction = grad_np(w + chord)
        w = w - lr * direction
        np.testing.assert_allclose(to_vec(state[0].average), d, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(to_vec(params), w, rtol=1e-5, atol=1e-6)
    assert int(state[0].count) == steps
