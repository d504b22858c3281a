"""Every Python block of the README runs, offline, against the scripted server."""

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert first_block.split("\n")[:2] == ['pip install -e ".[dev]"', "pytest"]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, scripted_llm, monkeypatch, capsys):
    for key, value in scripted_llm.env(model="readme-model").items():
        monkeypatch.setenv(key, value)
    scripted_llm.set_default(json.dumps({"reasoning": "scripted", "suggestion": {}}))
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert printed.strip(), "a README block should show its result"
