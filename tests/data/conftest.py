import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own xsam_jax cache (decoded TFDS splits, MNIST-1D), never ~/.cache."""
    path = tmp_path_factory.mktemp("xsam_jax_cache")
    monkeypatch.setenv("XSAM_JAX_CACHE", str(path))
    return path
