"""Prompt patches out: the source diff (git apply to a copy of a recipe, which then runs with the
new prompt), prompts built at run time reported unpatchable, and the patch set applied to a
live app with the parameters' validation."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from opto_adapters import apply_patch, cli
from opto_adapters.patches import (
    Change,
    PatchError,
    SourceIndex,
    changes_between,
    project_files,
    read_patch_set,
    source_diff,
    write_patch_set,
)
from opto_adapters.train.recipe import load_recipe
from opto_adapters.train.store import Store

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def project(tmp_path: Path, recipe: str) -> Path:
    """A copy of a recipe (with what it imports) in a fresh git repository."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(RECIPES / f"{recipe}.py", root)
    shutil.copy(RECIPES / "common.py", root)
    shutil.copytree(RECIPES / "data", root / "data")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "recipe")
    return root


def store_with_run(path: Path, parameters, old: dict, new: dict) -> Path:
    """A store holding one run whose baseline is ``old`` and whose best version is ``new``."""
    config = {"parameters": [{"name": p.name, "kind": p.kind, "description": p.description} for p in parameters]}
    with Store(path) as store:
        run_id, _ = store.open_run(config, {"train": [{"q": 1}]}, old, name="r")
        best = store.version(run_id, new)
        store.update_run(run_id, best_version_id=best, current_version_id=best, status="finished")
    return path


def git_apply(root: Path, patch: Path) -> None:
    check = git(root, "apply", "--check", str(patch))
    assert check.returncode == 0, check.stderr + patch.read_text()
    assert git(root, "apply", str(patch)).returncode == 0


def chat_inputs(app, x) -> list[str]:
    """The message texts the chat model received when ``app`` ran on ``x``."""
    from langchain_core.callbacks import BaseCallbackHandler

    seen: list[str] = []

    class Catch(BaseCallbackHandler):
        def on_chat_model_start(self, serialized, messages, **kwargs):
            seen.extend(m.content for batch in messages for m in batch)

    app.invoke(x, config={"callbacks": [Catch()]})
    return seen


# -- the source diff on the recipes --------------------------------------------------------------


def test_langchain_recipe_patched_by_git_apply_runs_with_the_new_prompt(tmp_path, capsys):
    from opto_adapters.langchain import OptoTracer

    root = project(tmp_path, "langchain_qa")
    recipe = load_recipe(root / "langchain_qa.py")
    tracer = OptoTracer(recipe.build_app(dry_run=True))
    old = {p.name: p.value for p in tracer.parameters}
    new = {
        "prompt.system": 'You answer with the "answer" alone:\na name, a number or a few words.',
        "prompt.human": "{question}\n\nAnswer only; no explanation.",
    }
    store = store_with_run(tmp_path / "runs.sqlite", tracer.parameters, old, new)
    diff, patch_set = tmp_path / "out.patch", tmp_path / "patches.json"
    code = cli.main(["export", str(store), "--diff", str(diff), "--patch-set", str(patch_set),
                     "--source", str(root / "langchain_qa.py")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "patched prompt.system at langchain_qa.py:" in out and "not patched" not in out
    assert "+SYSTEM_PROMPT = " in diff.read_text() and "-SYSTEM_PROMPT = " in diff.read_text()

    git_apply(root, diff)
    patched = load_recipe(root / "langchain_qa.py")
    assert patched.namespace["SYSTEM_PROMPT"] == new["prompt.system"]
    app = patched.build_app(dry_run=True)
    received = chat_inputs(app, {"question": "Capital of Peru?"})
    assert received == [new["prompt.system"], "Capital of Peru?\n\nAnswer only; no explanation."]
    # only the two prompt lines changed
    assert git(root, "diff", "--numstat").stdout.split()[:2] == ["2", "2"]

    entries = json.loads(patch_set.read_text())["patches"]
    assert [(e["parameter"], e["old"], e["new"]) for e in entries] == [
        (n, old[n], new[n]) for n in ("prompt.human", "prompt.system")
    ]
    human = next(e for e in entries if e["parameter"] == "prompt.human")
    assert human["variables"] == ["question"] and human["site"].startswith("langchain_qa.py:")
    assert "human" in human["object"]


def test_llama_index_recipe_with_a_concatenated_template(tmp_path, capsys):
    root = project(tmp_path, "rag_prompt_tuning")
    recipe = load_recipe(root / "rag_prompt_tuning.py")
    tracer = recipe.build_app(dry_run=True)
    try:
        name = "response_synthesizer.text_qa_template"
        old = {p.name: p.value for p in tracer.parameters}
        new_text = old[name].replace(
            "answer the query.\n", "answer the query\nin at most five words, taken from the context.\n"
        )
        assert new_text != old[name]
        store = store_with_run(tmp_path / "runs.sqlite", tracer.parameters, old, {**old, name: new_text})
    finally:
        tracer.close()
    diff = tmp_path / "out.patch"
    assert cli.main(["export", str(store), "--diff", str(diff), "--source", str(root)]) == 0
    text = diff.read_text()
    # the unchanged pieces of the concatenation stay; the changed one is re-split at its newline
    assert '-    "Given the context information and not prior knowledge, answer the query.\\n"' in text
    assert '+    "in at most five words, taken from the context.\\n"' in text
    assert text.count("\n+") - text.count("\n+++") == 2
    git_apply(root, diff)

    patched = load_recipe(root / "rag_prompt_tuning.py")
    tracer = patched.build_app(dry_run=True)
    try:
        assert tracer.parameter(name).value == new_text
        graph = tracer.run("How long is the return window?").graph
        llm_inputs = [str(graph.value_of(p)) for n in graph.nodes if n.op is not None and n.op.kind == "llm"
                      for p in n.parents]
        assert any("in at most five words, taken from the context." in t for t in llm_inputs)
    finally:
        tracer.close()


def test_tool_docstrings_and_an_inline_system_message_are_patched(tmp_path, capsys):
    from opto_adapters.langchain import OptoTracer

    root = project(tmp_path, "tool_agent")
    recipe = load_recipe(root / "tool_agent.py")
    tracer = OptoTracer(recipe.build_app(dry_run=True))
    old = {p.name: p.value for p in tracer.parameters}
    new = {
        **old,
        "agent.system_prompt": "Use the tools; shipping costs are in US dollars.",
        "tool.shipping_cost": "Shipping cost in USD of a parcel.\n\nArgs: weight in kg, zone A, B or C.",
    }
    store = store_with_run(tmp_path / "runs.sqlite", tracer.parameters, old, new)
    diff = tmp_path / "out.patch"
    assert cli.main(["export", str(store), "--diff", str(diff), "--source", str(root / "tool_agent.py")]) == 0
    git_apply(root, diff)
    app = load_recipe(root / "tool_agent.py").build_app(dry_run=True)
    assert {p.name: p.value for p in OptoTracer(app).parameters} == new
    from langchain_core.callbacks import BaseCallbackHandler

    seen: list[tuple[list[str], dict[str, str]]] = []

    class Catch(BaseCallbackHandler):
        def on_chat_model_start(self, serialized, messages, **kwargs):
            tools = (kwargs.get("invocation_params") or {}).get("tools") or []
            seen.append(([m.content for m in messages[0]],
                         {t["function"]["name"]: t["function"]["description"] for t in tools}))

    app.invoke({"messages": [{"role": "user", "content": "Ship 3 kg to zone B?"}]}, config={"callbacks": [Catch()]})
    assert len(seen) == 2  # the tool call, then the answer
    for contents, tools in seen:
        assert contents[0] == new["agent.system_prompt"]
        assert tools["shipping_cost"] == new["tool.shipping_cost"]


# -- prompts built at run time ------------------------------------------------------------------

RUNTIME_RECIPE = '''
from opto_adapters import Feedback, bundle, node

ROLE = "geography teacher"
greeting = node(f"You are a {ROLE}; answer in one short sentence.", name="greeting", trainable=True,
                kind="prompt", description="The greeting.")
LOADED = ROLE.upper() + " reply to: {q}"
reply = node(LOADED, name="reply", trainable=True, kind="prompt", description="The reply.")
fixed = node("Say \\"hi\\"\\tplease.", name="fixed", trainable=True, kind="prompt", description="A literal.")
'''


def test_a_prompt_built_at_run_time_is_reported_unpatchable(tmp_path, capsys):
    src = tmp_path / "app.py"
    src.write_text(RUNTIME_RECIPE)
    changes = [
        Change("greeting", "You are a geography teacher; answer in one short sentence.", "Be brief."),
        Change("reply", "GEOGRAPHY TEACHER reply to: {q}", "Answer: {q}", kind="prompt"),
        Change("fixed", 'Say "hi"\tplease.', "Say 'hello'\tplease.\n"),
        Change("examples", [{"q": "a"}], [{"q": "b"}], kind="json"),
    ]
    result = source_diff(changes, SourceIndex(project_files([src])), tmp_path)
    why = {c.parameter: c.unpatchable for c in result.changes}
    assert why["greeting"].startswith("built at run time by the f-string at app.py:5")
    assert why["reply"].startswith("built at run time: only a part of it is a literal (app.py:7)")
    assert why["fixed"] is None and result.changes[2].site == "app.py:9"
    assert why["examples"].startswith("a json value, not a text")
    assert "Be brief." not in result.text and "Answer: {q}" not in result.text
    diff = tmp_path / "d.patch"
    diff.write_text(result.text)
    git(tmp_path, "init", "-q")
    git_apply(tmp_path, diff)
    ns: dict = {"__file__": str(src)}
    exec(compile(src.read_text(), str(src), "exec"), ns)
    assert ns["fixed"].value == "Say 'hello'\tplease.\n"


def test_the_cli_lists_unpatchable_prompts_with_the_reason(tmp_path, capsys):
    from opto_adapters.trace import Parameter

    src = tmp_path / "app.py"
    src.write_text(RUNTIME_RECIPE)
    params = [Parameter("x", name=n, kind="prompt") for n in ("greeting", "fixed")]
    old = {"greeting": "You are a geography teacher; answer in one short sentence.", "fixed": 'Say "hi"\tplease.'}
    store = store_with_run(tmp_path / "s.sqlite", params, old, {"greeting": "Be brief.", "fixed": "Say hi."})
    patch_set = tmp_path / "p.json"
    assert cli.main(["export", str(store), "--diff", str(tmp_path / "d.patch"), "--patch-set", str(patch_set),
                     "--source", str(src)]) == 0
    out = capsys.readouterr().out
    assert "not patched in source: greeting: built at run time by the f-string at app.py:5" in out
    assert "wrote the source diff (1 of 2 change(s))" in out
    by_name = {c.parameter: c for c in read_patch_set(patch_set)}
    assert by_name["greeting"].unpatchable.startswith("built at run time") and by_name["greeting"].site is None
    assert by_name["fixed"].site == "app.py:9"


def test_export_needs_a_source_for_the_diff_and_something_to_write(tmp_path, capsys):
    from opto_adapters.trace import Parameter

    store = store_with_run(tmp_path / "s.sqlite", [Parameter("a", name="p")], {"p": "a"}, {"p": "b"})
    assert cli.main(["export", str(store), "--diff", str(tmp_path / "d.patch")]) == 1
    assert "--diff needs the app's source: add --source" in capsys.readouterr().err
    assert cli.main(["export", str(store)]) == 1
    assert "nothing to write" in capsys.readouterr().err
    assert not (tmp_path / "d.patch").exists()
    # a patch set alone needs no source: its entries are neither located nor unpatchable
    assert cli.main(["export", str(store), "--patch-set", str(tmp_path / "p.json")]) == 0
    assert "not patched" not in capsys.readouterr().out
    [change] = read_patch_set(tmp_path / "p.json")
    assert (change.parameter, change.old, change.new, change.site, change.unpatchable) == ("p", "a", "b", None, None)


# -- literal styles ---------------------------------------------------------------------------

STYLES = {
    "triple": ('X = """Line one.\n  Line "two".\n"""\n', 'Line one.\n  Line "two".\n', 'New """quoted""" one\\.\nEnd"'),
    "raw": ("X = r'C:\\path\\{name}'\n", "C:\\path\\{name}", "D:\\other\\{name}\\"),
    "concat-one-line": ('X = "Hello, " "{name}!"\n', "Hello, {name}!", "Bye, {name}."),
    "plus": ('X = ("Hello, " +\n     "{name}!")\n', "Hello, {name}!", "Hi {name}\nand bye."),
    "dedent": (
        "import textwrap\n\ndef f():\n    return textwrap.dedent('''\n        Be brief.\n        Cite.\n    ''')\n\nX = f()\n",
        "\nBe brief.\nCite.\n", "\nBe short.\n  Quote sources.\n",
    ),
    "unicode column": ('Y = "ééé"; X = "naïve café"\n', "naïve café", "naïve crème\x07"),
    "long to multiline": (
        "def g(**kw):\n    return kw['t']\n\nX = g(t='short')\n", "short",
        "A first line that is rather long, to make the literal span lines.\n" * 3,
    ),
    "docstring": (
        'def f():\n    """Look up an order.\n\n    Give its id.\n    """\n\nX = f.__doc__.strip()\n',
        "Look up an order.\n\n    Give its id.", "Find an order by id.\n\n    Args: the id.",
    ),
    "cleandoc": (
        'import inspect\n\ndef f():\n    """Look up an order.\n\n    Give its id.\n    """\n\nX = inspect.getdoc(f)\n',
        "Look up an order.\n\nGive its id.", "Find an order.\n\nArgs:\n    order_id: the id.",
    ),
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_literal_style_is_rewritten_to_exactly_the_new_text(style, tmp_path):
    source, old, new = STYLES[style]
    src = tmp_path / "m.py"
    src.write_text(source, encoding="utf-8")
    ns: dict = {}
    exec(compile(source, "m.py", "exec"), ns)
    assert ns["X"] == old  # the fixture says what the program sees
    result = source_diff([Change("x", old, new)], SourceIndex([src]), tmp_path)
    assert result.changes[0].unpatchable is None, result.changes[0].unpatchable
    patch = tmp_path / "d.patch"
    patch.write_text(result.text, encoding="utf-8")
    git(tmp_path, "init", "-q")
    git_apply(tmp_path, patch)
    ns = {}
    exec(compile(src.read_text(encoding="utf-8"), "m.py", "exec"), ns)
    assert ns["X"] == new


def test_a_text_written_at_two_places_is_not_guessed(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('A = "Be brief."\nB = "Be brief."\n')
    result = source_diff([Change("a", "Be brief.", "Be short.")], SourceIndex([src]), tmp_path)
    assert result.text == ""
    assert "written at 2 places (m.py:1, m.py:2)" in result.changes[0].unpatchable


def test_project_files_follow_imports_but_not_installed_packages(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "prompts.py").write_text("from . import extra\nSYSTEM = 'Be brief.'\n")
    (tmp_path / "pkg" / "extra.py").write_text("X = 1\n")
    (tmp_path / "app.py").write_text("import json\nimport langchain_core\nfrom pkg.prompts import SYSTEM\n")
    names = sorted(p.relative_to(tmp_path).as_posix() for p in project_files([tmp_path / "app.py"]))
    assert names == ["app.py", "pkg/__init__.py", "pkg/extra.py", "pkg/prompts.py"]
    site = SourceIndex(project_files([tmp_path / "app.py"])).find("Be brief.")
    assert [s.where(tmp_path) for s in site] == ["pkg/prompts.py:2"]


# -- the patch set --------------------------------------------------------------------------


def qa_chain():
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from tests.langchain_fakes import RecordingChatModel

    prompt = ChatPromptTemplate.from_messages([("system", "You answer about {topic}."), ("human", "{question}")])
    return prompt | RecordingChatModel(responses=["Paris."]) | StrOutputParser()


def test_apply_patch_round_trip(tmp_path):
    from opto_adapters.langchain import OptoTracer

    chain = qa_chain()
    tracer = OptoTracer(chain)
    old = {p.name: p.value for p in tracer.parameters}
    new = {**old, "prompt.system": "You answer about {topic}, in five words at most."}
    path = write_patch_set(changes_between(old, new, tracer.parameters), tmp_path / "p.json")
    [change] = read_patch_set(path)
    assert (change.parameter, change.variables, change.kind) == ("prompt.system", ["topic"], "prompt")
    previous = apply_patch(chain, path)
    assert previous == {"prompt.system": old["prompt.system"]}
    chain.invoke({"topic": "maps", "question": "Capital of France?"})
    assert chain.steps[1].calls[-1].system == "You answer about maps, in five words at most."
    # applied again: the live value is no longer the patch's old value
    with pytest.raises(PatchError, match=r"prompt.system: holds 'You answer about \{topic\}, in five words.*"
                       r"not the patch's old value 'You answer about \{topic\}.'.*force=True"):
        apply_patch(chain, path)
    assert apply_patch(chain, path, force=True) == {"prompt.system": new["prompt.system"]}


def test_apply_patch_writes_nothing_when_any_entry_fails(tmp_path):
    from opto_adapters.langchain import OptoTracer

    chain = qa_chain()
    tracer = OptoTracer(chain)
    before = {p.name: p.value for p in tracer.parameters}
    changes = [
        Change("prompt.human", "{question}", "Question: {question}", kind="prompt"),  # fine alone
        Change("prompt.system", "You answer about {topic}.", "You answer.", kind="prompt"),  # drops {topic}
    ]
    path = write_patch_set(changes, tmp_path / "p.json")
    with pytest.raises(PatchError, match=r"prompt.system: the new value is refused: the template drops the variable"):
        apply_patch(tracer, path)
    assert {p.name: p.value for p in tracer.parameters} == before
    stale = write_patch_set([changes[0], Change("prompt.system", "Something else.", "x")], tmp_path / "s.json")
    with pytest.raises(PatchError) as err:
        apply_patch(tracer, stale)
    assert list(err.value.problems) == ["prompt.system"] and "changed since the patch was made" in str(err.value)
    unknown = write_patch_set([Change("prompt.other", "a", "b")], tmp_path / "u.json")
    with pytest.raises(PatchError, match=r"prompt.other: the app has no such parameter \(its parameters: prompt.human, prompt.system\)"):
        apply_patch(tracer, unknown)
    assert {p.name: p.value for p in tracer.parameters} == before
    (tmp_path / "bad.json").write_text(json.dumps({"parameters": {}}))
    with pytest.raises(ValueError, match="is not an opto-adapters patch set"):
        apply_patch(tracer, tmp_path / "bad.json")


def test_an_optimized_recipe_exports_a_diff_that_git_applies(tmp_path, scripted_llm, monkeypatch, capsys):
    """End to end: optimize a recipe against the scripted server, export the best values as a
    diff of the recipe, apply it, and the recipe's prompt is the trained one."""
    from tests.test_cli import RECIPE
    from tests.train_apps import improve_then_worsen

    root = tmp_path / "proj"
    root.mkdir()
    recipe = root / "toy_recipe.py"
    recipe.write_text(RECIPE)
    git(root, "init", "-q")
    monkeypatch.setenv("OPENAI_BASE_URL", scripted_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    scripted_llm.set_default(improve_then_worsen)
    store = tmp_path / "runs.sqlite"
    assert cli.main(["optimize", str(recipe), "--store", str(store), "--model", "m", "--no-progress"]) == 0
    params = tmp_path / "params.json"
    diff = tmp_path / "out.patch"
    # the run remembers its recipe, so no --source is needed
    assert cli.main(["export", str(store), "-o", str(params), "--diff", str(diff)]) == 0
    best = json.loads(params.read_text())["parameters"]["prompt"]["value"]
    assert best != "Reply {q}"
    git_apply(root, diff)
    assert load_recipe(recipe).namespace["prompt"].value == best
    assert textwrap.dedent(RECIPE).count("Reply {q}") == 1 and "Reply {q}" not in recipe.read_text()


def test_a_trained_function_is_patched_in_its_own_file(tmp_path, capsys):
    from opto_adapters.train.apps import as_tracer

    root = project(tmp_path, "trace_python")
    recipe = load_recipe(root / "trace_python.py")
    [param] = as_tracer(recipe.build_app(), parameters=recipe.parameters).parameters
    new_code = (
        "def parse_price(text):\n"
        '    """Return the price in `text` as a float (0.0 when the item is free)."""\n'
        "    digits = ''.join(c for c in text if c.isdigit() or c == '.')\n"
        "    return float(digits) if digits else 0.0\n"
    )
    store = store_with_run(tmp_path / "s.sqlite", [param], {param.name: param.value}, {param.name: new_code})
    diff = tmp_path / "d.patch"
    assert cli.main(["export", str(store), "--diff", str(diff), "--source", str(root / "trace_python.py")]) == 0
    assert "patched parse_price_code at trace_python.py:18" in capsys.readouterr().out
    git_apply(root, diff)
    patched = load_recipe(root / "trace_python.py")
    assert patched.build_app()("$1,299.00").value == 1299.0
    assert "@bundle(trainable=True)\ndef parse_price(text):" in (root / "trace_python.py").read_text()


LLAMA_AGENT = '''
from llama_index.core.agent.workflow import FunctionAgent


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def build(llm):
    return FunctionAgent(tools=[add], llm=llm, system_prompt="You are a calculator.")
'''


def test_a_llama_index_function_tool_description_is_patched_in_its_docstring(tmp_path):
    from llama_index.core.tools import FunctionTool

    from opto_adapters.llama_index import OptoTracer as LlamaTracer
    from tests.llama_index_fakes import ScriptedToolLLM

    src = tmp_path / "calc.py"
    src.write_text(LLAMA_AGENT)
    ns: dict = {}
    exec(compile(LLAMA_AGENT, str(src), "exec", dont_inherit=True), ns)
    with LlamaTracer(ns["build"](ScriptedToolLLM(["4"]))) as tracer:
        old = {p.name: p.value for p in tracer.parameters}
    header = old["tool.add"].split("\n")[0]
    assert header == "add(a: int, b: int) -> int"
    new = {**old, "tool.add": header + "\nAdd two whole numbers; use it for every sum.",
           "agent.system_prompt": "You are a careful calculator."}
    changes = changes_between(old, new)
    result = source_diff(changes, SourceIndex([src]), tmp_path)
    assert [c.site for c in result.changes] == ["calc.py:11", "calc.py:6"]
    patch = tmp_path / "d.patch"
    patch.write_text(result.text)
    git(tmp_path, "init", "-q")
    git_apply(tmp_path, patch)
    ns = {}
    exec(compile(src.read_text(), str(src), "exec", dont_inherit=True), ns)
    assert FunctionTool.from_defaults(ns["add"]).metadata.description == new["tool.add"]
    # a new first line is a new signature: not written into the docstring
    renamed = source_diff([Change("tool.add", new["tool.add"], "plus(a, b)\nAdd.")], SourceIndex([src]), tmp_path)
    assert "the function's signature 'add(a: int, b: int) -> int'" in renamed.changes[0].unpatchable


def test_the_diff_paths_are_relative_to_the_git_work_tree(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src" / "app").mkdir(parents=True)
    git(repo, "init", "-q")
    src = repo / "src" / "app" / "prompts.py"
    src.write_text('SYSTEM = "Be brief."\n')
    result = source_diff([Change("system", "Be brief.", "Be short.")], SourceIndex(project_files([src])))
    assert result.root == repo.resolve()
    assert result.text.startswith("diff --git a/src/app/prompts.py b/src/app/prompts.py\n")
    patch = tmp_path / "d.patch"
    patch.write_text(result.text)
    git_apply(repo, patch)
    assert src.read_text() == 'SYSTEM = "Be short."\n'
