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


# --------------------------------------------------------------------------- docs/endpoints.md
# Its blocks are checked the same way: the servers' commands (``sh``) cannot run here, so each
# is checked against the section's URL and against the flag our ContextOverflow advice names;
# each section's exports are sourced and then used, as a user would, against the scripted
# server imitating that family; the run block and the Python blocks run as written.
ENDPOINTS = (ROOT / "docs" / "endpoints.md").read_text(encoding="utf-8")
SECTIONS = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", ENDPOINTS, flags=re.S | re.M))
FAMILY_OF = {
    "llama.cpp: llama-server": "llama.cpp",
    "llama.cpp: llama-cpp-python": "llama-cpp-python",
    "vLLM": "vllm",
    "Ollama": "ollama",
}
SERVER = {  # the command, the flag that sets the context, the default port
    "llama.cpp": ("llama-server ", "-c", 8080),
    "llama-cpp-python": ("python -m llama_cpp.server ", "--n_ctx", 8000),
    "vllm": ("vllm serve ", "--max-model-len", 8000),
    "ollama": ("OLLAMA_CONTEXT_LENGTH=", "OLLAMA_CONTEXT_LENGTH", 11434),
}


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def exports(block: str) -> dict[str, str]:
    out = subprocess.run(["env", "-i", "bash", "-c", block + "\nenv"], capture_output=True, text=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: v for k, v in env.items() if k.startswith(("OPENAI_", "OPTO_"))}


def test_endpoints_every_block_is_one_of_those_checked_below():
    every = [lang for lang, _ in re.findall(r"```(\w*)\n(.*?)```", ENDPOINTS, flags=re.S)]
    assert sorted(every) == sorted(["sh"] * 4 + ["bash"] * 5 + ["python"] * 3)
    for title in FAMILY_OF:
        assert len(fenced(SECTIONS[title], "sh")) == 1 and len(fenced(SECTIONS[title], "bash")) == 1
    assert len(fenced(SECTIONS["Run the recipes and the CLI"], "bash")) == 1


@pytest.mark.parametrize("title", list(FAMILY_OF))
def test_endpoints_server_command_sets_the_context_our_errors_name(title):
    from opto_adapters.llm.server import context_advice

    family = FAMILY_OF[title]
    command, flag, default_port = SERVER[family]
    (block,) = fenced(SECTIONS[title], "sh")
    assert block.startswith(command)
    assert re.search(rf"(^|\s){re.escape(flag)}[ =]\d+", block), block  # a size is set
    assert flag in context_advice(family)  # the advice a ContextOverflow gives names this flag
    port = re.search(r"--port (\d+)", block)
    url = exports(fenced(SECTIONS[title], "bash")[0])["OPENAI_BASE_URL"]
    assert url == f"http://localhost:{int(port.group(1)) if port else default_port}/v1"


@pytest.mark.parametrize("title", list(FAMILY_OF))
def test_endpoints_exports_work_against_that_server(title, monkeypatch):
    from opto_adapters.llm import LLM
    from opto_adapters.optimizers.llm_optimizer import REPLY_SCHEMA
    from opto_adapters.testing import ScriptedLLMServer

    family = FAMILY_OF[title]
    env = exports(fenced(SECTIONS[title], "bash")[0])
    assert {"OPENAI_BASE_URL", "OPENAI_API_KEY", "OPTO_MODEL"} <= set(env)
    reply = json.dumps({"reasoning": "r", "suggestion": {}})
    with ScriptedLLMServer([reply, reply], family=family) as server:
        for key in ("OPTO_JSON_MODE", "OPTO_CHECK_CONTEXT"):
            monkeypatch.delenv(key, raising=False)
        for key, value in {**env, "OPENAI_BASE_URL": server.base_url}.items():
            monkeypatch.setenv(key, value)
        llm = LLM()
        assert llm.model == env["OPTO_MODEL"]
        for _ in range(2):
            assert llm.complete_json("q", REPLY_SCHEMA, max_tokens=100).data["reasoning"] == "r"
        chats = server.chat_requests
        assert len(chats) == 2  # the documented settings spend one request per call
        assert all(r.status == 200 and r.model == env["OPTO_MODEL"] for r in chats)
        probes = [r.path for r in server.requests if not r.is_chat]
        if env.get("OPTO_CHECK_CONTEXT") == "1":  # the pre-check finds the published context
            assert llm.context_size == server.context_size and probes
        else:
            assert probes == []
        if family == "llama-cpp-python":
            assert chats[0].response_format == {"type": "json_object", "schema": REPLY_SCHEMA}
        else:
            assert chats[0].response_format_type == "json_schema"


def test_endpoints_run_block_runs_as_written(tmp_path):
    from opto_adapters.testing import ScriptedLLMServer

    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    env = offline_env()
    env.update(exports(fenced(SECTIONS["llama.cpp: llama-cpp-python"], "bash")[0]))
    reply = json.dumps({"reasoning": "scripted", "suggestion": {}})
    with ScriptedLLMServer(default=reply, family="llama-cpp-python") as server:
        env["OPENAI_BASE_URL"] = server.base_url
        for command in commands(fenced(SECTIONS["Run the recipes and the CLI"], "bash")[0]):
            argv = command.split()
            if argv[0] == "python":
                argv[0] = sys.executable
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            assert done.stdout.strip(), command
        formats = {json.dumps(r.response_format, sort_keys=True) for r in server.chat_requests}
    assert len(formats) == 1 and '"type": "json_object"' in formats.pop()  # llama.cpp mode, no refusal
    assert (tmp_path / "runs.sqlite").exists()


@pytest.mark.parametrize("index", range(len(fenced(ENDPOINTS, "python"))))
def test_endpoints_python_block_runs(index, monkeypatch, capsys):
    from opto_adapters.testing import ScriptedLLMServer

    block = fenced(ENDPOINTS, "python")[index]
    family = "llama.cpp" if "check_context" in block else "llama-cpp-python"
    with ScriptedLLMServer(default='{"colour": "teal"}', family=family) as server:
        for key, value in server.env(model="docs-model").items():
            monkeypatch.setenv(key, value)
        exec(compile(block, f"docs/endpoints.md block {index}", "exec"), {"__name__": "__docs__"})
        out = capsys.readouterr().out
        assert out.strip(), "a block should show its result"
        if "json_mode=" in block:
            assert out.strip() == "llama.cpp {'colour': 'teal'}"
            assert server.chat_requests[0].response_format["type"] == "json_object"
        if "check_context" in block:
            assert "not sent" in out and "--ctx-size" in out and not server.chat_requests
        if "DeadlineExceeded" in block:
            assert out.startswith("0 ") and server.request_count == 0
