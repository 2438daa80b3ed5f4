"""The README's Python blocks run as written (they are what newcomers paste)."""

import math
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "README lost its quick start, training or sharpness example"
    namespaces = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
        namespaces.append(namespace)
    # The quick start's last loss and the training example's metrics are finite numbers.
    assert math.isfinite(float(namespaces[0]["value"]))
    assert math.isfinite(float(namespaces[1]["metrics"]["loss"]))
    assert 0.0 <= float(namespaces[1]["metrics"]["accuracy"]) <= 1.0
    top3 = namespaces[2]["top3"]
    assert top3.shape == (3,) and float(top3[0]) >= float(top3[1]) >= float(top3[2])
