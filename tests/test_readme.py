"""The README's Python blocks run as written (they are what newcomers paste)."""

import math
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "README lost its quick start, training or sharpness example"
    namespaces = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
        namespaces.append(namespace)
    quick, planned, training, sharpness = namespaces[:4]
    # The quick start's last loss and the training example's metrics are finite numbers.
    assert math.isfinite(float(quick["value"]))
    # The host-side plan of the late-phase schedule: SGD for 8 steps, then SAM.
    assert planned["plan"].tolist() == [False] * 8 + [True] * 2
    assert math.isfinite(float(training["metrics"]["loss"]))
    assert 0.0 <= float(training["metrics"]["accuracy"]) <= 1.0
    top3 = sharpness["top3"]
    assert top3.shape == (3,) and float(top3[0]) >= float(top3[1]) >= float(top3[2])
    # The smoothed density covers the spectrum: as the comment says, it integrates to about 1.
    mass = np.trapezoid(np.asarray(sharpness["phi"]), np.asarray(sharpness["grid"]))
    assert abs(mass - 1.0) < 1e-3
