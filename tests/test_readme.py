"""The README's code runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(after_heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(after_heading):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_layer_example_runs_as_written():
    namespace: dict = {}
    exec(compile(_python_block("## The layer"), "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["model"].output_shape == (None, None, None, 128)
    assert tuple(namespace["y"].shape) == (None, 128, 256)
