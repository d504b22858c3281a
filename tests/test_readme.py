"""Every code block of the README runs, offline: Python blocks in-process against the scripted
server, shell blocks as written (the set-up block is what CI runs, then the main job's dry run).
The one line that needs a real endpoint (the main job without ``--dry-run``, the README's second
block) is run only without one, to check that it is the same job and says what to set."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
BASH = re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)
SETUP, FOR_REAL, *OTHER_BASH = BASH  # the first two blocks, before any section
ENDPOINT_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPTO_MODEL")


def commands(block: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def block_with(word: str) -> str:
    (block,) = [b for b in OTHER_BASH if b.startswith(word)]
    return block


def offline_env() -> dict[str, str]:
    """This environment without any endpoint: no OPENAI_* or OPTO_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OPTO_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_every_bash_block_is_covered_below():
    kinds = ["export ", "opto-adapters ", "python recipes/"]
    assert sorted(kinds) == sorted(k for b in OTHER_BASH for k in kinds if k in b.splitlines()[0])
    assert len(OTHER_BASH) == len(kinds)


def test_readme_starts_with_the_two_setup_commands_that_ci_runs_then_the_main_job():
    assert TEXT.index(FOR_REAL) < TEXT.index("## ")  # both blocks before any section
    setup = commands(SETUP)
    assert setup[:2] == ['pip install -e ".[dev]"', "pytest"]
    assert setup[2:] == ["opto-adapters optimize recipes/langchain_qa.py --dry-run"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in setup[:2]:
        assert command in ci


def test_the_main_job_dry_run_runs_offline_as_written(tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    command = commands(SETUP)[2]
    done = subprocess.run(command, shell=True, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "#Variables" in out and "prompt.system" in out and "prompt.human" in out
    assert "#Feedback" in out  # the whole optimizer prompt, built without calling a model
    assert [p.name for p in tmp_path.iterdir()] == ["recipes"]  # a dry run stores nothing


def test_the_main_job_for_real_is_the_same_command_and_names_the_endpoint_it_needs(tmp_path):
    (for_real,) = commands(FOR_REAL)
    assert for_real + " --dry-run" == commands(SETUP)[2]
    between = TEXT[TEXT.index(SETUP) + len(SETUP) : TEXT.index(FOR_REAL)]
    assert all(f"`{name}`" in between for name in ENDPOINT_VARIABLES)
    # Not run against an endpoint here; without one it must stop at once and say what to set.
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    done = subprocess.run(for_real, shell=True, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, f"{done.stdout}\n{done.stderr}"
    assert all(name in done.stderr for name in ENDPOINT_VARIABLES)
    assert "--dry-run" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["recipes"]  # stopped before any store


def test_endpoint_block_sets_the_variables_it_names():
    block = block_with("export ")
    out = subprocess.run(["bash", "-c", block + "\nenv"], capture_output=True, text=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["OPENAI_BASE_URL"] == "http://localhost:11434/v1"
    assert env["OPTO_MODEL"] and env["OPTO_APP_MODEL"] and env["OPENAI_API_KEY"]


@pytest.fixture
def shell_env(scripted_llm):
    env = offline_env()
    env.update(scripted_llm.env(model="readme-model"))
    scripted_llm.set_default(json.dumps({"reasoning": "scripted", "suggestion": {}}))
    return env


def test_cli_block_runs_as_written(shell_env, tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    for command in commands(block_with("opto-adapters ")):
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=shell_env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert done.stdout.strip(), command
    assert json.loads((tmp_path / "params.json").read_text())["parameters"]["parse_price_code"]["kind"] == "code"
    assert "<html" in (tmp_path / "report.html").read_text().lower()


def test_recipe_block_runs_as_written(shell_env):
    for command in commands(block_with("python recipes/")):
        argv = command.split()
        argv[0] = sys.executable
        done = subprocess.run(argv, cwd=ROOT, env=shell_env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert "traced graph:" in done.stdout and "#Variables" in done.stdout


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_python_block_runs(index, scripted_llm, monkeypatch, capsys):
    for key, value in scripted_llm.env(model="readme-model").items():
        monkeypatch.setenv(key, value)
    scripted_llm.set_default(json.dumps({"reasoning": "scripted", "suggestion": {}}))
    exec(compile(PYTHON[index], f"README block {index}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip(), "a README block should show its result"
    if "OptoPrime" in PYTHON[index] and ".step()" in PYTHON[index]:
        assert scripted_llm.chat_requests, "the block's optimizer step reached the endpoint"
