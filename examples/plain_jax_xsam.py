"""XSAM on a plain-JAX model (no Flax): watch α*, the probe losses and cos ψ it keeps.

A two-layer tanh network on scikit-learn's digits, XSAM chained before SGD with momentum and
weight decay, α* searched once an epoch. At the end it plots the last search's probe losses
L(θ + ρ_max·v(α)) against α (`--plot PATH`).

  python examples/plain_jax_xsam.py --epochs 20 --plot alpha.png
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import xsam_jax as xs
from xsam_jax import data


def init(key, sizes=(64, 128, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def loss(params, batch):
    h = batch["x"]
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--plot", default=None, help="save the last alpha curve here (PNG/SVG)")
    args = parser.parse_args(argv)
    ds = data.load("digits")
    steps_per_epoch = len(ds.y_train) // 64
    tx = optax.chain(
        xs.xsam(rho=0.15, rho_max=0.3, search_every=steps_per_epoch),
        optax.add_decayed_weights(5e-4),
        optax.sgd(0.05, momentum=0.9),
    )
    params = init(jax.random.key(0))
    state = tx.init(params)

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params, loss_fn=lambda p: loss(p, batch))
        return optax.apply_updates(params, updates), state

    x_test, y_test = ds.arrays("test")
    for epoch in range(args.epochs):
        for batch in ds.train_batches(64, epoch=epoch):
            params, state = step(params, state, batch)
        xsam_state = state[0]
        test_loss = loss(params, {"x": x_test, "y": y_test})
        print(
            f"epoch {epoch + 1:3d}  test loss {float(test_loss):.3f}  "
            f"alpha* {float(xsam_state.alpha):.1f}  cos psi {float(xsam_state.cos_psi):.3f}"
        )
    if args.plot:
        from xsam_jax import plotting

        plotting.plot_alpha_curve(
            xs.alpha_grid(2.0, 0.1),
            xsam_state.alpha_losses,
            alpha_star=float(xsam_state.alpha),
            path=args.plot,
        )
    return float(test_loss), xsam_state


if __name__ == "__main__":
    main()
