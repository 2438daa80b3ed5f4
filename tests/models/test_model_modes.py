"""Forward passes on tiny inputs, train/eval switching, the registry and argument checks.

Only small configurations run for real (narrow ResNets, WRN-10-1, a two-block DenseNet,
the VGG MLP head); the full-size models are covered by tracing in test_model_params.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from xsam_jax import experiment, models
from xsam_jax.models.densenet import DenseNet
from xsam_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from xsam_jax.models.vgg import _MLPHead
from xsam_jax.models.wide_resnet import WideResNet

IMAGES = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))


@nnx.jit
def apply(model, x):
    # One XLA compilation per model and mode; eager calls compile every op separately,
    # which costs several times more on CPU. State updates (BatchNorm statistics, dropout
    # RNG counters) propagate back to `model` as in an eager call.
    return model(x)


TINY_IMAGE_MODELS = {
    "resnet_basic": lambda r: ResNet(BasicBlock, (1, 1, 1, 1), 5, base_width=4, rngs=r),
    "resnet_bottleneck": lambda r: ResNet(Bottleneck, (1, 1, 1, 1), 5, base_width=4, rngs=r),
    "wrn10_1": lambda r: WideResNet(10, 1, 5, rngs=r),
    "densenet": lambda r: DenseNet((2, 2), 5, growth_rate=4, rngs=r),
}


def batch_stats(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))


def trees_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


@pytest.mark.parametrize("name", sorted(TINY_IMAGE_MODELS))
def test_batchnorm_train_updates_statistics_eval_does_not(name):
    model = TINY_IMAGE_MODELS[name](nnx.Rngs(0))
    before = batch_stats(model)
    train_out = apply(model, IMAGES)
    assert train_out.shape == (4, 5)
    after_train = batch_stats(model)
    assert not trees_equal(before, after_train)

    model.eval()
    out1, out2 = apply(model, IMAGES), apply(model, IMAGES)
    assert trees_equal(after_train, batch_stats(model))
    np.testing.assert_array_equal(out1, out2)
    assert np.all(np.isfinite(out1))

    model.train()
    apply(model, IMAGES)
    assert not trees_equal(after_train, batch_stats(model))


def test_view_switches_mode_without_touching_the_model():
    # Dropout masks of 4-D activations compile slowly on CPU, hence tiny 2x2 images.
    model = WideResNet(10, 1, 5, dropout=0.3, rngs=nnx.Rngs(0))
    images = IMAGES[:2, :2, :2]
    eval_view = nnx.view(model, use_running_average=True, deterministic=True)
    before = batch_stats(model)
    np.testing.assert_array_equal(apply(eval_view, images), apply(eval_view, images))
    assert trees_equal(before, batch_stats(model))
    # The original is still in train mode: dropout draws new masks, statistics move.
    assert not np.array_equal(apply(model, images), apply(model, images))
    assert not trees_equal(before, batch_stats(model))
    model.eval()
    np.testing.assert_array_equal(apply(model, images), apply(eval_view, images))


def test_vgg_mlp_head_dropout_modes():
    # The head alone: a full VGG-11 forward costs seconds of compilation and adds nothing
    # over the traced shape check in test_model_params.py.
    head = _MLPHead(512, 10, dropout=0.5, rngs=nnx.Rngs(0))
    features = jax.random.normal(jax.random.key(1), (2, 512))
    assert apply(head, features).shape == (2, 10)
    assert not np.array_equal(apply(head, features), apply(head, features))
    head.eval()
    np.testing.assert_array_equal(apply(head, features), apply(head, features))


SIGNAL = jax.random.normal(jax.random.key(2), (3, 40))
DIGITS = jax.random.uniform(jax.random.key(3), (3, 64))


@pytest.mark.parametrize(
    ("name", "kw", "x"),
    [
        ("mlp", {}, SIGNAL),
        ("mlp", {"in_features": 64}, DIGITS),
        ("mlp", {"in_features": 64}, DIGITS.reshape(3, 8, 8, 1)),
        ("cnn1d", {}, SIGNAL),
        ("cnn1d", {}, SIGNAL[..., None]),
        ("cnn1d", {"input_length": 64}, DIGITS.reshape(3, 8, 8, 1)),
        ("cnn1d_wide", {}, SIGNAL),
        ("cnn1d_wide", {"input_length": 64}, DIGITS.reshape(3, 8, 8, 1)),
        ("transformer", {}, SIGNAL),
        ("transformer", {"pool": "cls"}, SIGNAL[..., None]),
        ("transformer", {"input_length": 64, "patch_size": 8}, DIGITS),
    ],
)
def test_small_models_forward(name, kw, x):
    model = models.create(name, 10, rngs=nnx.Rngs(0), **kw)
    out = apply(model, x)
    assert out.shape == (3, 10)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, apply(model, x))


def test_transformer_dropout_modes():
    model = models.create("transformer", 10, rngs=nnx.Rngs(0), dropout=0.2)
    assert not np.array_equal(apply(model, SIGNAL), apply(model, SIGNAL))
    model.eval()
    np.testing.assert_array_equal(apply(model, SIGNAL), apply(model, SIGNAL))


def test_mean_pool_is_permutation_invariant_without_positions():
    # Sanity check of the token pipeline: zeroing the positional embedding makes the
    # mean-pooled encoder invariant to permuting whole patches.
    model = models.create("transformer", 10, rngs=nnx.Rngs(0))
    model.pos_embedding[...] = jnp.zeros_like(model.pos_embedding[...])
    patches = SIGNAL.reshape(3, 10, 4)
    permuted = patches[:, ::-1].reshape(3, 40)
    np.testing.assert_allclose(apply(model, SIGNAL), apply(model, permuted), rtol=1e-5, atol=1e-5)


def test_jitted_training_steps_reduce_loss_and_update_statistics():
    model = TINY_IMAGE_MODELS["resnet_basic"](nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    labels = jnp.arange(4) % 5

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            logits = model(IMAGES)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    before = batch_stats(model)
    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert not trees_equal(before, batch_stats(model))


def test_registry_lists_and_builds_every_name():
    assert models.available() == sorted(
        [
            "resnet18",
            "resnet34",
            "resnet50",
            "wrn16_8",
            "wrn28_10",
            "vgg11",
            "vgg11_mlp",
            "vgg16",
            "densenet121",
            "cnn1d",
            "cnn1d_wide",
            "mlp",
            "transformer",
        ]
    )


def test_available_for_a_shape_lists_the_models_that_read_it():
    signals = ["cnn1d", "cnn1d_wide", "mlp", "transformer"]
    assert models.available((40,)) == models.available((40, 2)) == signals
    assert models.available((8, 8, 3)) == models.available()


def test_exactly_the_models_listed_for_signals_read_them():
    """The rule, tried out on MNIST-1D's shape: each model is built as `xsam-train` builds it
    and traced on a batch (`jax.eval_shape`: shapes only); those not listed must fail."""
    shape = (40,)
    x = jnp.zeros((2, *shape))
    for name in models.available():
        kwargs = experiment.train._model_kwargs(name, shape)

        def logits(x, name=name, kwargs=kwargs):
            return models.create(name, 10, rngs=nnx.Rngs(0), **kwargs)(x)

        try:
            reads = jax.eval_shape(logits, x).shape == (2, 10)
        except (TypeError, ValueError):
            reads = False
        assert reads == (name in models.available(shape)), name


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        models.create("resnet19", 10, rngs=nnx.Rngs(0))
    assert "resnet19" in str(info.value)
    assert all(name in str(info.value) for name in models.available())


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda r: models.create("mlp", 0, rngs=r), "num_classes"),
        (lambda r: WideResNet(15, 2, 10, rngs=r), "depth"),
        (lambda r: WideResNet(16, 0, 10, rngs=r), "widen_factor"),
        (lambda r: WideResNet(16, 1, 10, dropout=1.0, rngs=r), "dropout"),
        (lambda r: ResNet(BasicBlock, (2, 2, 2), 10, rngs=r), "blocks_per_stage"),
        (lambda r: ResNet(BasicBlock, (1, 1, 1, 1), 10, base_width=0, rngs=r), "base_width"),
        (lambda r: models.create("vgg11", 10, rngs=r, classifier="conv"), "classifier"),
        (lambda r: models.create("vgg11", 10, rngs=r, dropout=-0.1), "dropout"),
        (lambda r: DenseNet((), 10, rngs=r), "layers_per_block"),
        (lambda r: DenseNet((2,), 10, growth_rate=0, rngs=r), "growth_rate"),
        (lambda r: models.create("transformer", 10, rngs=r, patch_size=3), "patch_size"),
        (lambda r: models.create("transformer", 10, rngs=r, num_heads=3), "num_heads"),
        (lambda r: models.create("transformer", 10, rngs=r, depth=0), "depth"),
        (lambda r: models.create("transformer", 10, rngs=r, pool="max"), "pool"),
        (lambda r: models.create("cnn1d", 10, rngs=r, kernel_size=4), "kernel_size"),
        (lambda r: models.create("mlp", 10, rngs=r, hidden=(10, 0)), "hidden"),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build(nnx.Rngs(0))


@pytest.mark.parametrize(
    ("name", "x", "match"),
    [
        ("mlp", jnp.zeros((2, 41)), "in_features=40"),
        ("cnn1d", jnp.zeros((2, 64)), "input_length=40"),
        ("cnn1d", jnp.zeros((2, 40, 2)), "in_channels=1"),
        ("transformer", jnp.zeros((2, 36)), "input_length=40"),
    ],
)
def test_wrong_input_shape_raises_value_error(name, x, match):
    model = models.create(name, 10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        model(x)
