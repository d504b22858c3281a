"""The shared rules (opto_adapters.rules): each syntax reads variables exactly as its framework
does, tool-description and empty-text rules, standard names; and no framework import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from opto_adapters import rules

# (template, syntax): malformed ones included; each framework's own parser is the oracle
LANGCHAIN_CASES = {
    "f-string": [
        "Answer {question} about {topic}.",
        "JSON like {{\"a\": 1}} for {q}",
        "{x:>10} and {y!r}",
        "{}",
        "no variables",
        "About {topic",
        "About topic}",
        "{topic.x}",
        "{items[0]}",
        "{0}",
        "{x:{width}}",
    ],
    "mustache": [
        "Answer {{question}} for {{user}}.",
        "{{#items}}{{name}}{{/items}} {{total}}",
        "{{^empty}}{{.}}{{/empty}}",
        "{{{raw}}} {{&also_raw}} {{person.name}} {{! comment }} {{> partial}}",
        "{{=<% %>=}}<% q %> {{not_a_variable}}",
        "line\n  {{#s}}\n  x\n  {{/s}}\n{{after}}",
        "{{{not_closed_raw}}",
        "{{unclosed",
        "{{ }}",
        "{{#open}} never closed",
        "{{/never_opened}}",
        "{{#a}}{{/b}}",
        "{{=<% %>}}",
    ],
    "jinja2": [
        "Answer {{ question }} for {{ user }}.",
        "{% if user %}{{ user }}: {% endif %}{{ question }}",
        "{% for x in items %}{{ x }}{% endfor %}{{ total }}",
        "{% set y = 1 %}{{ y }}{{ z }}",
        "{{ unclosed",
        "{% if %}",
    ],
}


def _langchain(text: str, syntax: str):
    from langchain_core.prompts.string import get_template_variables

    try:
        return frozenset(get_template_variables(text, syntax))
    except Exception:  # ValueError, ChevronError, TemplateSyntaxError
        return "malformed"


def _ours(text: str, syntax: str):
    try:
        return rules.template_variables(text, syntax)
    except ValueError:
        return "malformed"


@pytest.mark.parametrize(
    ("syntax", "text"), [(s, t) for s, texts in LANGCHAIN_CASES.items() for t in texts]
)
def test_variables_are_read_as_langchain_reads_them(syntax, text):
    assert _ours(text, syntax) == _langchain(text, syntax)


@pytest.mark.parametrize(
    "text",
    [
        "Context: {context_str}\nQuery: {query_str}",
        'Reply as JSON: {"answer": "..."} for {query_str}',
        "{{not an escape}} {a.b} {1x} { spaced }",
        "unbalanced { and {query_str",
    ],
)
def test_llama_syntax_is_llama_index_own_formatter(text):
    from llama_index.core.prompts.utils import get_template_vars

    assert rules.template_variables(text, "llama") == frozenset(get_template_vars(text))


def test_python_syntax_is_str_format():
    assert rules.template_variables("{a.b} {c[0]} {{d}}", "python") == {"a", "c"}
    with pytest.raises(ValueError):
        rules.template_variables("{a", "python")
    # the same text is malformed for LangChain's f-string reading, and fine for LlamaIndex's
    with pytest.raises(ValueError, match="attribute access"):
        rules.template_variables("{a.b}", "f-string")
    assert rules.template_variables("{a", "llama") == frozenset()


def test_template_problem_keeps_exactly_the_original_variables():
    keep = {"topic", "question"}
    assert rules.template_problem("On {topic}: {question}", keep) is None
    assert "drops the variable(s) {topic}" in rules.template_problem("Q: {question}", keep)
    assert "introduces unknown variable(s) {tone}" in rules.template_problem(
        "{topic} {question} {tone}", keep
    )
    assert "malformed f-string template" in rules.template_problem("{topic", keep)
    assert "expected template text" in rules.template_problem(3, keep)
    # each syntax in its own spelling
    assert "{{user}}" in rules.template_problem("{{question}}", {"question", "user"}, "mustache")
    assert rules.template_problem('{"a": 1} {query_str}', {"query_str"}, "llama") is None
    with pytest.raises(ValueError, match="unknown template syntax"):
        rules.template_variables("x", "handlebars")


def test_variable_parser_counts_partials_as_present():
    parse = rules.variable_parser("f-string", partials={"today"})
    assert parse("Q: {q}") == {"q", "today"}
    assert parse("Q: {q} on {today}") == {"q", "today"}
    with pytest.raises(ValueError):
        rules.variable_parser("f-strings")


def test_text_rule_refuses_emptying_a_text_that_was_not_empty():
    assert rules.text_problem(" ", "Be brief.") == "the text is empty; give the full text"
    assert rules.text_problem("Be terse.", "Be brief.") is None
    assert rules.text_problem("", "") is None  # empty to begin with: may stay empty
    assert rules.text_validator("") is None
    assert rules.text_validator("Be brief.")("\n") is not None


def test_tool_description_rules():
    short = "Get the weather."
    assert rules.tool_description_problem("Weather for a city.", short) is None
    assert rules.tool_description_problem("  ", short) == "the text is empty; give the full text"
    assert rules.tool_description_problem("x" * 1024, short) is None
    assert "1025 characters" in rules.tool_description_problem("x" * 1025, short)
    assert "at most 1024" in rules.tool_description_problem("x" * 1025, short)
    assert rules.tool_description_constraint(short).startswith("at most 1024 characters")
    # an original already over the limit may only shrink
    long = "y" * 1500
    assert rules.tool_description_limit(long) == 1500
    assert rules.tool_description_problem("y" * 1500, long) is None
    assert "must be at most 1500" in rules.tool_description_problem("y" * 1501, long)
    assert "at most 1500 characters (the length it started with" in (
        rules.tool_description_constraint(long)
    )
    # the original is always accepted (construction, reverts), blank, empty or over-long...
    for original in ("", "   ", long):
        assert rules.tool_description_validator(original)(original) is None
    # ...but a suggestion never is empty, even for a tool that had no description
    assert rules.tool_description_problem("", "   ") is not None
    assert rules.tool_description_problem(" ", "") is not None
    assert "expected text" in rules.tool_description_problem(None, short)


def test_standard_names():
    assert rules.system_prompt_name() == rules.AGENT_SYSTEM_PROMPT == "agent.system_prompt"
    assert rules.system_prompt_name("planner") == "planner.system_prompt"
    assert rules.tool_name("get.weather now") == "tool.get_weather_now"
    assert rules.prompt_name("system") == "prompt.system"
    assert rules.prompt_name("example_prompt.human", "qa") == "qa.example_prompt.human"
    assert rules.name_part("a.b") == "a_b"
    assert len(rules.join_name("x" * 80, "y" * 80)) == rules.NAME_LENGTH
    assert "'get_weather'" in rules.describe_tool("get_weather")
    assert rules.describe_system_prompt("the agent 'planner'").startswith(
        "System prompt of the agent 'planner'"
    )


def test_rules_import_no_framework():
    code = (
        "import sys, opto_adapters.rules as r; r.template_variables('{{a}}', 'mustache');"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('langchain', 'langchain_core', 'langgraph', 'llama_index', 'openai')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
