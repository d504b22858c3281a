"""Toy traced apps and guides for the trainer tests (not collected: no ``test_`` prefix).

The app fills a question into a trainable prompt template; the guide scores an output by the
markers it contains (``ANSWER`` and ``!``), so a suggested template changes the score:
``"Reply {q}"`` scores 0, ``"ANSWER {q}"`` 0.5, ``"ANSWER {q}!"`` 1.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from opto_adapters.llm import LLM
from opto_adapters.trace import Feedback, Parameter, bundle, node

MARKERS = ("ANSWER", "!")


@dataclass
class ToyApp:
    prompt: Parameter
    calls: list[str] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    fail_on: frozenset[str] = frozenset()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        app = self

        @bundle()
        def respond(template, q):
            """Fill the question into the template (a stand-in for a model call)."""
            with app.lock:
                app.calls.append(q)
                app.threads.add(threading.current_thread().name)
            if q in app.fail_on:
                raise ValueError(f"cannot answer {q}")
            return template.format(q=q)

        self.respond = respond

    def __call__(self, q):
        return self.respond(self.prompt, q)


def make_app(template: str = "ANSWER {q}", **kw) -> ToyApp:
    prompt = node(template, name="prompt", trainable=True, kind="prompt", description="The reply template.")
    return ToyApp(prompt, **kw)


def guide(example, output):
    if isinstance(output, BaseException):
        return None  # use the trainer's default feedback for app errors
    hits = sum(marker in output for marker in MARKERS)
    missing = [m for m in MARKERS if m not in output]
    return Feedback(score=hits / len(MARKERS), text="missing " + ", ".join(missing) if missing else "good")


def data(n: int, prefix: str = "q") -> list[dict]:
    return [{"input": f"{prefix}{i}"} for i in range(n)]


def reply(template: str, reasoning: str = "because") -> dict:
    return {"reasoning": reasoning, "suggestion": {"prompt": template}}


def section(user_prompt: str, name: str) -> str:
    """One ``#Section`` of an optimizer's user message."""
    return user_prompt.split(f"\n#{name}\n", 1)[1].split("\n\n#", 1)[0]


def user_prompts(server) -> list[str]:
    """The user message of every optimizer request (the problem instance and memory)."""
    return [r.messages[-1]["content"] for r in server.chat_requests]


def llm_for(server, **kw) -> LLM:
    return LLM(base_url=server.base_url, api_key="k", model="m", backoff_base=0.01, **kw)


def improve_then_worsen(body: dict) -> str:
    """A scripted optimizer that moves toward ``ANSWER {q}!`` and then suggests a worse value."""
    variables = section(body["messages"][-1]["content"], "Variables")
    if "ANSWER {q}!" in variables:
        return json.dumps(reply("Reply {q}", "try something else"))
    if "ANSWER {q}" in variables:
        return json.dumps(reply("ANSWER {q}!", "add the exclamation mark"))
    return json.dumps(reply("ANSWER {q}", "add the ANSWER marker"))
