"""Fault injection for the trainer (issue 11, item 7): used by tests/test_faults.py and
benchmarks/bench_faults.py (not collected: no ``test_`` prefix).

A LangChain chain (prompt | recording fake model | parser) is trained by OptoPrime against a
``ScriptedLLMServer`` whose replies carry, at random per seed, HTTP 500s, timeouts, malformed and
fenced JSON, surrogates, 1 MB replies, unknown variable names and invalid templates. One seed is
three processes: an uninterrupted reference run, a run killed with SIGKILL at a random point,
and a fresh process resuming it (``resume=True``) on the same store.

A reply depends only on the seed, the optimizer's request and how often that same request was
made in this process, so the killed-and-resumed run sees the same replies as the reference.
Every process checks the live prompt objects at each evaluation, each optimizer request and at
the end, and logs, one JSON line per event, what was injected and what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARK = "Reply with the bare answer ONLY."
FACTS = {"capital of France": "Paris", "capital of Italy": "Rome", "capital of Spain": "Madrid",
         "capital of Peru": "Lima", "capital of Chile": "Santiago", "capital of Japan": "Tokyo"}
QUESTIONS = [{"question": f"What is the {k}?", "answer": v} for k, v in FACTS.items()]
TRAIN, VAL = QUESTIONS[:4], QUESTIONS[4:]
SYSTEM, HUMAN = "You are helpful.", "{question}"
# what a sane optimizer suggests (all valid); the scripted one picks among them per request
GOOD_SYSTEM = [f"You are helpful. {MARK}", "Be brief.", f"Be brief. {MARK}", "You are helpful."]
GOOD_HUMAN = ["Question: {question}", "{question}"]
ALLOWED = {"prompt.system": {SYSTEM, *GOOD_SYSTEM}, "prompt.human": {HUMAN, *GOOD_HUMAN}}

# "surrogate_value": a lone surrogate inside a suggested value (the core refuses it)
SURROGATE_IN_VALUE = "surrogate_value"
KINDS = ("http500", "timeout", "malformed", "fenced", "surrogate", "huge", "unknown_var",
         "bad_template", SURROGATE_IN_VALUE)
WEIGHTS = {"ok": 6, "http500": 2, "timeout": 1, "malformed": 2, "fenced": 2, "surrogate": 2,
           "huge": 1, "unknown_var": 2, "bad_template": 2, SURROGATE_IN_VALUE: 2}
CLIENT_TIMEOUT = 0.25


def answer_for(text: str) -> str:
    asked = max(FACTS, key=text.rfind)
    answer = FACTS[asked]
    return answer if MARK in text else f"Well, I believe that the answer is {answer}."


def guide(example: dict, output: Any) -> Any:
    from opto_adapters.trace import Feedback

    text = str(output)
    if text.strip() == example["answer"]:
        return Feedback(score=1.0, text="correct")
    return Feedback(score=0.5 if example["answer"] in text else 0.0, text=f"answer with just {example['answer']!r}")


def make_chain() -> tuple[Any, Any]:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from tests.langchain_fakes import RecordingChatModel

    model = RecordingChatModel(respond=lambda messages: answer_for("\n".join(str(m.content) for m in messages)))
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", HUMAN)])
    return prompt | model | StrOutputParser(), prompt


def live_problems(prompt: Any) -> list[str]:
    """What is invalid in the live prompt objects (empty when all is well)."""
    from opto_adapters.trace.templates import template_variables

    problems = []
    for name, message, want in (("prompt.system", prompt.messages[0], frozenset()),
                                ("prompt.human", prompt.messages[1], frozenset({"question"}))):
        value = message.prompt.template
        if not isinstance(value, str):
            problems.append(f"{name} is a {type(value).__name__}")
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"{name} holds a lone surrogate: {value!r:.80}")
        try:
            got = template_variables(value)
        except ValueError as exc:
            problems.append(f"{name} is a malformed template ({exc}): {value!r:.80}")
        else:
            if got != want:
                problems.append(f"{name} has variables {sorted(got)}, not {sorted(want)}")
        if value not in ALLOWED[name]:
            problems.append(f"{name} holds a value never suggested validly: {value!r:.80}")
    if sorted(prompt.input_variables) != ["question"]:
        problems.append(f"the prompt's input variables are {prompt.input_variables}")
    return problems


@dataclass
class Log:
    """One JSON line per event, flushed at once (the process may be killed any moment)."""

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, **event: Any) -> None:
        line = json.dumps(event, ensure_ascii=True) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # a line cut by the kill
            pass
    return events


class FaultyOptimizer:
    """The scripted server's reply function: a good suggestion, or a fault."""

    def __init__(self, seed: int, log: Log, kinds: tuple[str, ...], on_request: Any) -> None:
        self.seed, self.log, self.kinds, self.on_request = seed, log, kinds, on_request
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        from opto_adapters.testing import Reply

        self.on_request()
        user = str(body["messages"][-1]["content"])
        key = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        with self.lock:
            attempt = self.seen[key]
            self.seen[key] += 1
        rng = random.Random(f"{self.seed}:{key}:{attempt}")
        kinds = ["ok", *self.kinds]
        kind = rng.choices(kinds, weights=[WEIGHTS.get(k, 2) for k in kinds])[0]
        suggestion = {"prompt.system": rng.choice(GOOD_SYSTEM)}
        if rng.random() < 0.3:
            suggestion["prompt.human"] = rng.choice(GOOD_HUMAN)
        good = {"reasoning": "terse answers score higher", "suggestion": suggestion}
        self.log.write(event="fault", kind=kind, key=key, attempt=attempt)
        if kind == "http500":
            return Reply.error(500, "injected server error")
        if kind == "timeout":
            return Reply.delay(CLIENT_TIMEOUT * 2.5, json.dumps(good))
        if kind == "malformed":
            return rng.choice(['{"reasoning": "cut', "not json at all", '{"suggestion": [1, 2', ""])
        if kind == "fenced":
            return "Here you go:\n```json\n" + json.dumps(good, indent=2) + "\n```"
        if kind == "surrogate":  # in the reasoning only: stored, shown escaped
            return json.dumps({**good, "reasoning": "shorter \udcff answers"})
        if kind == SURROGATE_IN_VALUE:
            return json.dumps({**good, "suggestion": {"prompt.system": f"Be brief.\udcff {MARK}"}})
        if kind == "huge":
            return json.dumps({**good, "reasoning": "r" * 1_000_000})
        if kind == "unknown_var":
            return json.dumps({**good, "suggestion": {**suggestion, "prompt.nonexistent": "x", "system": MARK}})
        if kind == "bad_template":
            bad = rng.choice([f"Answer {{nope}}. {MARK}", f"Answer {{ {MARK}", "{question} {MARK}"])
            return json.dumps({**good, "suggestion": {"prompt.system": bad}})
        return json.dumps(good)


def run_trainer(seed: int, store: str, log_path: str, *, resume: bool, kill: tuple[str, float] | None,
                kinds: tuple[str, ...], memory_size: int) -> None:
    """One training process (the target of a subprocess): train, check, log, maybe get killed."""
    import httpx
    import openai

    from opto_adapters.langchain import OptoTracer
    from opto_adapters.llm import LLM
    from opto_adapters.optimizers import OptoPrime
    from opto_adapters.testing import ScriptedLLMServer
    from opto_adapters.train import optimize

    log = Log(Path(log_path))
    chain, prompt = make_chain()
    counts = Counter()
    lock = threading.Lock()

    def event(what: str) -> None:
        with lock:
            counts[what] += 1
            n = counts[what]
        problems = live_problems(prompt)
        if problems:
            log.write(event="invalid", where=what, problems=problems)
        if kill is not None and kill[0] == what and n == int(kill[1]):
            log.write(event="kill", where=what, n=n)
            os.kill(os.getpid(), signal.SIGKILL)

    def checked_guide(example: dict, output: Any) -> Any:
        event("guide")
        return guide(example, output)

    if kill is not None and kill[0] == "timer":
        def fire() -> None:
            log.write(event="kill", where="timer", n=kill[1])
            os.kill(os.getpid(), signal.SIGKILL)

        timer = threading.Timer(kill[1], fire)
        timer.daemon = True
        timer.start()

    with ScriptedLLMServer(FaultyOptimizer(seed, log, kinds, lambda: event("llm"))) as server:
        # plain HTTP to 127.0.0.1: no CA bundle to load (a tenth of a second per process)
        client = openai.OpenAI(base_url=server.base_url, api_key="k", http_client=httpx.Client(verify=False))
        llm = LLM(client=client, model="opt", timeout=CLIENT_TIMEOUT, max_retries=2, backoff_base=0.01,
                  max_backoff=0.05)
        tracer = OptoTracer(chain)
        optimizer = OptoPrime(tracer.parameters, llm, memory_size=memory_size)
        result = optimize(tracer, TRAIN, VAL, guide=checked_guide, optimizer=optimizer, input_key=["question"],
                          epochs=2, batch_size=2, max_concurrency=1, store=store, progress=False,
                          resume=resume, seed=seed)
    event("end")
    log.write(event="done", status=result.status, best_values=result.best_values,
              live={"prompt.system": prompt.messages[0].prompt.template,
                    "prompt.human": prompt.messages[1].prompt.template},
              history=[s.status for s in result.history], events=dict(counts))


_CONTEXT: Any = None
_PRELOAD = [
    "tests.faults", "tests.langchain_fakes", "langchain_core.prompts", "langchain_core.output_parsers",
    "langchain_core.messages", "opto_adapters.langchain", "opto_adapters.langchain.tracer",
    "opto_adapters.optimizers", "opto_adapters.train", "opto_adapters.llm", "opto_adapters.testing",
    "openai", "openai.resources.chat.completions", "openai.types.chat", "httpx",
]


def _context() -> Any:
    """A forkserver that has imported the frameworks once: each run is a fresh process that
    starts in milliseconds, not seconds."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(_PRELOAD)
    return _CONTEXT


def spawn(seed: int, store: Path, log: Path, *, resume: bool = False, kill: tuple[str, float] | None = None,
          kinds: tuple[str, ...] = KINDS, memory_size: int = 5, timeout: float = 120) -> int | None:
    """Run ``run_trainer`` in a fresh process; its exit code (-9: killed)."""
    proc = _context().Process(target=run_trainer, args=(seed, str(store), str(log)),
                              kwargs={"resume": resume, "kill": kill, "kinds": kinds, "memory_size": memory_size})
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return proc.exitcode


@dataclass
class SeedOutcome:
    seed: int
    faults: Counter[str]
    kill: tuple[str, float]
    killed: bool
    problems: list[str]
    reference: dict[str, Any] | None
    resumed: dict[str, Any] | None

    @property
    def survived(self) -> bool:
        return not self.problems


def store_problems(path: Path) -> list[str]:
    from opto_adapters.train import Store

    problems = []
    conn = sqlite3.connect(path)
    try:
        (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
    finally:
        conn.close()
    if verdict != "ok":
        problems.append(f"integrity_check: {verdict}")
    try:
        with Store(path, readonly=True) as store:
            problems.extend(store.check())
    except Exception as exc:  # a store that cannot even be opened is the worst problem
        problems.append(f"the store cannot be opened: {exc}")
    return problems


def _exit_status(code: int | None, log: Path) -> int | None:
    """The exit code, or what the run's log says when the forkserver could not read it back
    (multiprocessing.popen_forkserver reports 255 then): its last event is ``done`` (0) or
    our ``kill`` (-9)."""
    if code != 255:
        return code
    events = read_log(log)
    last = events[-1]["event"] if events else None
    return {"done": 0, "kill": -signal.SIGKILL}.get(last, code)


def run_seed(seed: int, workdir: Path, kinds: tuple[str, ...] = KINDS, *, memory_size: int = 5,
             kill: tuple[str, float] | None = None) -> SeedOutcome:
    """Reference run, killed run, resumed run; every check of item 7. ``memory_size``: the
    optimizer's memory of earlier steps (OptoPrime's default; a resumed run restores it from
    the store); ``kill`` overrides the random kill point."""
    workdir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    ref_log, run_log = workdir / "reference.jsonl", workdir / "run.jsonl"
    start = time.monotonic()
    code = _exit_status(spawn(seed, workdir / "reference.sqlite", ref_log, kinds=kinds, memory_size=memory_size), ref_log)
    took = time.monotonic() - start
    ref_events = read_log(ref_log)
    reference = next((e for e in ref_events if e["event"] == "done"), None)
    if code != 0 or reference is None:
        problems.append(f"the reference run exited with {code}")
    rng = random.Random(seed)
    where = rng.choice(["guide", "guide", "llm", "timer"])
    seen = (reference or {}).get("events", {})
    n_guide, n_llm = max(1, seen.get("guide", 1)), max(1, seen.get("llm", 1))
    if kill is not None:
        pass
    elif where == "guide":
        kill = ("guide", rng.randint(1, n_guide))
    elif where == "llm":
        kill = ("llm", rng.randint(1, n_llm))
    else:
        kill = ("timer", round(rng.uniform(0.05, max(0.1, took * 0.8)), 3))
    store = workdir / "runs.sqlite"
    first = spawn(seed, store, run_log, kill=kill, kinds=kinds, memory_size=memory_size)
    first = _exit_status(first, run_log)
    killed = first == -signal.SIGKILL
    if first not in (0, -signal.SIGKILL):
        problems.append(f"the run to be killed exited with {first}")
    second = _exit_status(spawn(seed, store, run_log, resume=True, kinds=kinds, memory_size=memory_size), run_log)
    if second != 0:
        problems.append(f"the resumed run exited with {second}")
    events = read_log(run_log)
    done = [e for e in events if e["event"] == "done"]
    resumed = done[-1] if done else None
    for e in ref_events + events:
        if e["event"] == "invalid":
            problems.append(f"invalid live value at {e['where']}: {'; '.join(e['problems'])}")
    if store.exists():
        problems.extend(store_problems(store))
    else:
        problems.append("no store was written")
    if reference and resumed:
        if resumed["status"] != reference["status"]:
            problems.append(f"resumed run {resumed['status']}, reference {reference['status']}")
        if resumed["best_values"] != reference["best_values"]:
            problems.append(f"best values differ: resumed {resumed['best_values']} vs reference {reference['best_values']}")
        if resumed["live"] != reference["live"]:
            problems.append(f"live values differ: resumed {resumed['live']} vs reference {reference['live']}")
    faults = Counter(e["kind"] for e in ref_events if e["event"] == "fault")
    return SeedOutcome(seed, faults, kill, killed, problems, reference, resumed)

