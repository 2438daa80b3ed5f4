"""The README's Python blocks run as written (the quick start is what newcomers paste)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    # The quick start trains for three steps: its last loss must be a finite number.
    assert float(namespace["value"]) == float(namespace["value"])
