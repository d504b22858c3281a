"""Quality with a real model: every engine on tasks shipped in the repository.

Run (any OpenAI-compatible endpoint; the key is read from $OPENAI_API_KEY, or --api-key-env):

    python benchmarks/quality.py --base-url http://localhost:8000/v1 --model NAME
        [--app-model NAME] [--seeds 3] [--budget 100] [--tasks object_counting,...]
        [--engines none,opro,greedy,pareto,trace-opt,gepa] [--concurrency 4]
    python benchmarks/quality.py --tiny --base-url URL      # mechanics only, tiny sizes

Tasks (generated here with gold answers, or shipped under recipes/data):
object_counting, word_sorting and date_arithmetic (BBH-style, one trainable instruction
prompt of a traced Python app); langchain_notes (a two-step LangChain chain over the
Northwind help pages: take notes, then answer; both system prompts trainable);
llama_index_rag (recipes/rag_prompt_tuning.py: a LlamaIndex query engine over the same pages,
its QA and refine templates trainable).

Engines: none (the seed prompts), OPRO (graph-free, through today's trainer), greedy
(OptoPrime, today's search), pareto (OptoPrime, ``search="pareto"`` when the installed trainer
has it), trace-opt (trace-opt's own OptoPrime and its minibatch loop, Python tasks only, when
installed), gepa (the ``gepa`` package's engine with its default reflective proposer on the
same model, when installed). Each engine gets the same budget of metric calls (app runs
scored by the guide, training and validation together); the values it returns are scored on
held-out test examples (not counted). Printed per task and engine: the mean test score with a
95% interval over seeds, the rollouts used and the optimizer's tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import random
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_search import trainer_supports  # noqa: E402  (one check of what the trainer has)

from opto_adapters import Feedback, bundle, node  # noqa: E402
from opto_adapters.llm import LLM, BudgetExceeded  # noqa: E402
from opto_adapters.optimizers import OPRO, OptoPrime  # noqa: E402
from opto_adapters.trace import apply_updates  # noqa: E402
from opto_adapters.train import as_tracer, optimize  # noqa: E402

ENGINES = ("none", "opro", "greedy", "pareto", "trace-opt", "gepa")
TASKS = ("object_counting", "word_sorting", "date_arithmetic", "langchain_notes", "llama_index_rag")
NOT_AVAILABLE = "not available in this build"
SEED_INSTRUCTION = "Answer the question."


@dataclass(frozen=True)
class Sizes:
    train: int = 12
    val: int = 12
    test: int = 30
    budget: int = 100
    batch_size: int = 3
    seeds: int = 3


TINY = Sizes(train=3, val=2, test=2, budget=14, batch_size=2, seeds=1)


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str
    model: str
    app_model: str
    concurrency: int = 4

    def llm(self, model: str | None = None) -> LLM:
        return LLM(model=model or self.model, base_url=self.base_url, api_key=self.api_key,
                   temperature=0.0, max_retries=2)

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """The recipe convention's variables (app_model()) for the duration of a build."""
        names = {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key,
                 "OPTO_MODEL": self.model, "OPTO_APP_MODEL": self.app_model}
        saved = {k: os.environ.get(k) for k in names}
        os.environ.update(names)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# -- BBH-style tasks, generated with gold answers ---------------------------------------------

CATEGORIES = {
    "musical instruments": ["piano", "flute", "violin", "trumpet", "drum", "clarinet", "trombone", "accordion"],
    "fruits": ["apple", "banana", "peach", "plum", "grape", "orange", "strawberry", "nectarine"],
    "vegetables": ["carrot", "onion", "cabbage", "potato", "yam", "garlic", "celery", "cauliflower"],
    "animals": ["cat", "dog", "goat", "rabbit", "snake", "pig", "cow", "donkey"],
}
NUMBER_WORDS = ["zero", "a", "two", "three", "four", "five"]
WORDS = (
    "anchor basalt cobalt dune ember fjord glacier harbor islet jasper kelp lagoon meadow nectar "
    "orchid pebble quartz ravine saffron tundra umber valley willow xylem yarrow zephyr almond "
    "bramble cedar delta estuary fennel garnet hazel indigo juniper kestrel lantern marble"
).split()
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def plural(word: str, n: int) -> str:
    if n == 1:
        return word
    return word + ("es" if word.endswith(("sh", "ch", "s", "o")) and word != "piano" else "s")


def object_counting(rng: random.Random) -> dict[str, str]:
    cats = rng.sample(sorted(CATEGORIES), 3)
    items: list[tuple[str, str, int]] = []
    for cat in cats:
        for word in rng.sample(CATEGORIES[cat], rng.randint(1, 3)):
            items.append((cat, word, rng.randint(1, 4)))
    rng.shuffle(items)
    target = cats[0]
    listed = [f"{NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} {plural(w, n)}" for _, w, n in items]
    text = ", ".join(listed[:-1]) + f", and {listed[-1]}"
    gold = sum(n for c, _, n in items if c == target)
    return {"question": f"I have {text}. How many {target} do I have?", "answer": str(gold)}


def word_sorting(rng: random.Random) -> dict[str, str]:
    words = rng.sample(WORDS, rng.randint(5, 9))
    return {"question": "Sort the following words alphabetically: List: " + " ".join(words),
            "answer": " ".join(sorted(words))}


def date_arithmetic(rng: random.Random) -> dict[str, str]:
    day = _dt.date(2000, 1, 1) + _dt.timedelta(days=rng.randint(0, 11_000))
    delta = rng.choice([-1, 1]) * rng.randint(1, 400)
    when = "later" if delta > 0 else "earlier"
    target = day + _dt.timedelta(days=delta)
    return {
        "question": f"Today is {MONTHS[day.month - 1]} {day.day}, {day.year}. What is the date "
                    f"{abs(delta)} days {when}, in MM/DD/YYYY?",
        "answer": target.strftime("%m/%d/%Y"),
    }


GENERATORS = {"object_counting": object_counting, "word_sorting": word_sorting,
              "date_arithmetic": date_arithmetic}


def final_answer(reply: str) -> str:
    """The answer in a model's reply: after the last 'Answer:', else its last non-empty line."""
    text = reply.strip()
    found = re.findall(r"answer\s*(?:is)?\s*[:=]\s*(.+)", text, flags=re.I)
    line = found[-1] if found else (text.splitlines() or [""])[-1]
    return line.strip().strip("*.` ").strip()


def exact_guide(example: dict[str, Any], output: Any) -> Feedback:
    if isinstance(output, BaseException):
        return Feedback(score=0.0, text=f"the app failed: {type(output).__name__}: {output}")
    got = final_answer(str(output))
    if " ".join(got.lower().split()) == example["answer"].lower():
        return Feedback(score=1.0, text="")
    return Feedback(score=0.0, text=f"wrong: the expected answer is {example['answer']!r}; "
                                   f"the reply's final answer was {got[:120]!r}")


# -- the tasks ---------------------------------------------------------------------------------


@dataclass
class Task:
    name: str
    kind: str  # "python" | "langchain" | "llama_index"
    objective: str
    guide: Callable[[Any, Any], Any]
    input_key: Any
    build: Callable[[Endpoint], tuple[Any, list[Any]]]  # -> (tracer, parameters)
    data: Callable[[int, Sizes], tuple[list[Any], list[Any], list[Any]]]
    seed_values: Callable[[Endpoint], dict[str, str]] | None = None


def python_task(name: str) -> Task:
    def build(endpoint: Endpoint) -> tuple[Any, list[Any]]:
        app_llm = endpoint.llm(endpoint.app_model)
        instructions = node(SEED_INSTRUCTION, name="instructions", trainable=True, kind="prompt",
                            description="the system message the model answers with")

        @bundle()
        def solve(instructions, question):
            """Ask the model: the instructions as the system message, the question as the user's."""
            return app_llm.complete([{"role": "system", "content": instructions},
                                     {"role": "user", "content": question}], max_tokens=600)

        def app(question: str):
            return solve(instructions, question)

        return as_tracer(app, parameters=[instructions]), [instructions]

    def data(seed: int, sizes: Sizes):
        rng = random.Random(f"{name}-{seed}")
        make = GENERATORS[name]
        rows = [make(rng) for _ in range(sizes.train + sizes.val + sizes.test)]
        return rows[: sizes.train], rows[sizes.train : sizes.train + sizes.val], rows[sizes.train + sizes.val :]

    objective = (f"The model answers {name.replace('_', ' ')} questions; the reply is graded by "
                 "exact match of its final answer with the reference.")
    return Task(name, "python", objective, exact_guide, "question", build, data)


def northwind_split(seed: int, sizes: Sizes) -> tuple[list[Any], list[Any], list[Any]]:
    """The shipped Northwind questions (recipes/data), shuffled by seed into three parts."""
    data = json.loads((ROOT / "recipes" / "data" / "northwind_qa.json").read_text(encoding="utf-8"))
    rows = data["train"] + data["val"]
    random.Random(f"northwind-{seed}").shuffle(rows)
    third = len(rows) // 3
    n_train, n_val = min(sizes.train, third), min(sizes.val, third)
    n_test = min(sizes.test, len(rows) - n_train - n_val)
    return rows[:n_train], rows[n_train : n_train + n_val], rows[n_train + n_val : n_train + n_val + n_test]


NOTES_SYSTEM = "Read the help pages and write down what they say about the question."
ANSWER_SYSTEM = "You are a helpful assistant. Answer the customer's question using the notes."


def langchain_task() -> Task:
    sys.path.insert(0, str(ROOT / "recipes"))
    from common import answer_feedback, keyword_vector

    def build(endpoint: Endpoint) -> tuple[Any, list[Any]]:
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.prompts import ChatPromptTemplate
        from langchain_core.runnables import RunnableLambda, RunnablePassthrough
        from langchain_openai import ChatOpenAI

        from opto_adapters.langchain import OptoTracer

        docs = json.loads((ROOT / "recipes" / "data" / "northwind_docs.json").read_text(encoding="utf-8"))
        vectors = [(d, keyword_vector(f"{d['title']} {d['text']}")) for d in docs]

        def pages(question: str) -> str:
            q = keyword_vector(question)
            ranked = sorted(vectors, key=lambda dv: -sum(a * b for a, b in zip(q, dv[1], strict=True)))
            return "\n\n".join(f"{d['title']}\n{d['text']}" for d, _ in ranked[:2])

        model = ChatOpenAI(model=endpoint.app_model, base_url=endpoint.base_url,
                           api_key=endpoint.api_key, temperature=0, max_retries=1)
        notes = ChatPromptTemplate.from_messages(
            [("system", NOTES_SYSTEM), ("human", "Help pages:\n{pages}\n\nQuestion: {question}")])
        answer = ChatPromptTemplate.from_messages(
            [("system", ANSWER_SYSTEM), ("human", "Notes:\n{notes}\n\nQuestion: {question}")])
        chain = (
            RunnableLambda(lambda x: {"question": x["question"], "pages": pages(x["question"])})
            | RunnablePassthrough.assign(notes=notes | model | StrOutputParser())
            | answer | model | StrOutputParser()
        )
        tracer = OptoTracer(chain)
        return tracer, list(tracer.parameters)

    objective = ("Customers ask short factual questions about Northwind Outfitters; answers must be "
                 "correct, from the help pages, and as short as possible (a number or a few words).")
    return Task("langchain_notes", "langchain", objective,
                lambda ex, out: answer_feedback(ex["answer"], out), ["question"], build, northwind_split)


def llama_index_task() -> Task:
    from opto_adapters.train.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "rag_prompt_tuning.py")

    def build(endpoint: Endpoint) -> tuple[Any, list[Any]]:
        with endpoint.environment():  # a new app each time (Recipe.build_app keeps its first)
            tracer = recipe.namespace["build_app"]()
        return tracer, list(tracer.parameters)

    return Task("llama_index_rag", "llama_index", recipe.objective or "", recipe.guide,
                recipe.input_key, build, northwind_split)


def make_task(name: str) -> Task:
    if name in GENERATORS:
        return python_task(name)
    if name == "langchain_notes":
        return langchain_task()
    if name == "llama_index_rag":
        return llama_index_task()
    raise SystemExit(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")


# -- budgets and evaluation ------------------------------------------------------------------


class BudgetedGuide:
    """The task's guide, counting metric calls and refusing the one past ``budget`` (with
    ``BudgetExceeded``, so the trainer stops cleanly and keeps the best values validated)."""

    def __init__(self, guide: Callable[[Any, Any], Any], budget: int) -> None:
        self.guide, self.budget = guide, budget
        self.used = self.refused = 0
        self._lock = threading.Lock()

    def __call__(self, example: Any, output: Any) -> Any:
        with self._lock:
            if self.used >= self.budget:
                self.refused += 1
                raise BudgetExceeded(f"the benchmark's budget of {self.budget} metric calls is spent",
                                     calls_used=self.used, tokens_used=0, max_calls=self.budget, max_tokens=None)
            self.used += 1
        return self.guide(example, output)


def set_values(parameters: list[Any], values: dict[str, Any]) -> None:
    by_name = {p.name: p for p in parameters}
    apply_updates({by_name[k]: v for k, v in values.items() if k in by_name})


def values_now(parameters: list[Any]) -> dict[str, Any]:
    return {p.name: p.value for p in parameters}


def score(task: Task, tracer: Any, examples: list[Any], concurrency: int = 1) -> float:
    """Mean guide score of the app's current values on ``examples`` (not budgeted)."""
    from concurrent.futures import ThreadPoolExecutor

    from opto_adapters.train.data import app_inputs, call_guide

    inputs = app_inputs(examples, "test", task.input_key)

    def one(i: int) -> float:
        run = tracer.run(inputs[i])
        fb = call_guide(task.guide, examples[i], run.output, run.error, split="test", index=i, error_score=0.0)
        return float(fb.score)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return statistics.fmean(pool.map(one, range(len(examples))))


@dataclass
class Row:
    task: str
    engine: str
    seed: int
    test: float | None
    rollouts: int = 0
    tokens: int = 0
    note: str = ""
    seconds: float = 0.0
    changed: bool = False  # the values returned differ from the seed values


def peer_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def unavailable(engine: str, task: Task) -> str:
    """Why ``engine`` cannot run ``task`` here ('' when it can)."""
    if engine == "pareto" and not trainer_supports()["pareto"]:
        return f"{NOT_AVAILABLE} (the trainer has no search='pareto')"
    if engine == "trace-opt":
        if peer_version("trace-opt") is None:
            return 'not installed (pip install --no-deps "trace-opt==0.1.3.8" graphviz)'
        if task.kind != "python":
            return "trace-opt has no LangChain/LlamaIndex adapter"
    if engine == "gepa" and peer_version("gepa") is None:
        return "not installed (pip install gepa)"
    return ""


# -- the engines ---------------------------------------------------------------------------------


def run_ours(engine: str, task: Task, seed: int, sizes: Sizes, endpoint: Endpoint, data) -> Row:
    train, val, test = data
    tracer, params = task.build(endpoint)
    if engine == "none":
        return Row(task.name, engine, seed, score(task, tracer, test, endpoint.concurrency))
    before = values_now(params)
    llm = endpoint.llm()
    optimizer = (OPRO if engine == "opro" else OptoPrime)(params, llm, objective=task.objective)
    guide = BudgetedGuide(task.guide, sizes.budget)
    supports = trainer_supports()
    options: dict[str, Any] = {}
    if supports["search"]:
        options["search"] = "pareto" if engine == "pareto" else "greedy"
    if supports["max_metric_calls"]:
        options["max_metric_calls"] = sizes.budget
    result = optimize(
        tracer, train, val, guide=guide, optimizer=optimizer, input_key=task.input_key, seed=seed,
        batch_size=sizes.batch_size, epochs=1_000, max_steps=sizes.budget, progress=False,
        max_concurrency=endpoint.concurrency, tolerate_app_errors=True, **options,
    )
    set_values(params, result.best_values)
    return Row(task.name, engine, seed, score(task, tracer, test, endpoint.concurrency), guide.used,
               llm.usage.total_tokens, "" if result.status in ("completed", "budget_exhausted", "max_steps") else result.status,
               changed=values_now(params) != before)


class Refused(Exception):
    """An evaluation the budget did not allow."""


class GepaAdapter:
    """Our app (any tracer) behind GEPA's adapter protocol: ``evaluate`` sets the candidate's
    values and runs the app; ``make_reflective_dataset`` gives the inputs, outputs and feedback."""

    propose_new_texts = None  # GEPA's default reflective proposer, on the same model

    def __init__(self, task: Task, tracer: Any, params: list[Any], guide: BudgetedGuide) -> None:
        self.task, self.tracer, self.params, self.guide = task, tracer, params, guide
        self.refused = False

    def evaluate(self, batch: list[Any], candidate: dict[str, str], capture_traces: bool = False):
        from gepa.core.adapter import EvaluationBatch

        from opto_adapters.train.data import app_inputs, call_guide

        if self.guide.used + len(batch) > self.guide.budget:
            self.refused = True
            raise Refused(f"{len(batch)} more metric calls would pass the budget of {self.guide.budget}")
        inputs = app_inputs(batch, "train", self.task.input_key)
        try:
            set_values(self.params, candidate)
            invalid = None
        except Exception as exc:  # e.g. a template without its fields
            invalid = f"the candidate's values were refused: {exc}"
        outputs, scores, traces = [], [], []
        for i, (example, value) in enumerate(zip(batch, inputs, strict=True)):
            if invalid:
                self.guide.used += 1
                fb = Feedback(score=0.0, text=invalid)
                output = None
            else:
                run = self.tracer.run(value)
                fb = call_guide(self.guide, example, run.output, run.error, split="train", index=i, error_score=0.0)
                output = run.output if run.error is None else f"error: {run.error}"
            outputs.append(output)
            scores.append(float(fb.score))
            traces.append({"input": value, "output": str(output)[:2000], "feedback": fb.text or "correct"})
        return EvaluationBatch(outputs=outputs, scores=scores, trajectories=traces if capture_traces else None)

    def make_reflective_dataset(self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]):
        records = [{"Inputs": t["input"], "Generated Outputs": t["output"], "Feedback": t["feedback"]}
                   for t in eval_batch.trajectories or []]
        return {c: records for c in components_to_update}


def run_gepa(task: Task, seed: int, sizes: Sizes, endpoint: Endpoint, data) -> Row:
    import gepa

    train, val, test = data
    tracer, params = task.build(endpoint)
    guide = BudgetedGuide(task.guide, sizes.budget)
    adapter = GepaAdapter(task, tracer, params, guide)
    llm = endpoint.llm()
    seed_candidate = {p.name: p.value for p in params if isinstance(p.value, str)}

    class Quiet:
        def log(self, message: str) -> None:
            pass

    result = gepa.optimize(
        seed_candidate=seed_candidate, trainset=train, valset=val, adapter=adapter,
        reflection_lm=lambda prompt: llm.complete(prompt if isinstance(prompt, str) else list(prompt)),
        reflection_minibatch_size=sizes.batch_size, seed=seed, logger=Quiet(),
        stop_callbacks=[lambda state: guide.used >= sizes.budget or adapter.refused], max_metric_calls=sizes.budget,
        raise_on_exception=False, display_progress_bar=False,
    )
    set_values(params, dict(result.best_candidate))  # type: ignore[arg-type]
    return Row(task.name, "gepa", seed, score(task, tracer, test, endpoint.concurrency), guide.used, llm.usage.total_tokens,
               changed=any(values_now(params)[k] != v for k, v in seed_candidate.items()))


class PeerLLM:
    """trace-opt's LLM interface (``llm(messages=..., max_tokens=...)`` with ``.choices``) over
    our client, so its OptoPrime talks to the same endpoint and its tokens are counted."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def __call__(self, messages: list[dict[str, Any]], max_tokens: int | None = None, **kwargs: Any) -> Any:
        import types

        params = {"max_tokens": max_tokens} if max_tokens else {}
        if kwargs.get("response_format"):
            params["response_format"] = kwargs["response_format"]
        text = self.llm.complete(messages, **params)
        message = types.SimpleNamespace(content=text, role="assistant")
        return types.SimpleNamespace(choices=[types.SimpleNamespace(message=message, finish_reason="stop", index=0)])


def run_trace_opt(task: Task, seed: int, sizes: Sizes, endpoint: Endpoint, data) -> Row:
    """trace-opt's OptoPrime in the loop of its own examples: a minibatch, feedback on each
    output, one step; the last values are kept (no validation)."""
    import peer

    optimizers = peer.load_optimizers()
    import opto.trace as t

    train, val, test = data
    app_llm = endpoint.llm(endpoint.app_model)
    instructions = t.node(SEED_INSTRUCTION, name="instructions", trainable=True,
                          description="the system message the model answers with")

    @t.bundle()
    def solve(instructions, question):
        """Ask the model: the instructions as the system message, the question as the user's."""
        return app_llm.complete([{"role": "system", "content": instructions},
                                 {"role": "user", "content": question}], max_tokens=600)

    @t.bundle()
    def together(*replies):
        """The minibatch's replies, numbered [0], [1]... as in the feedback."""
        return "\n".join(f"[{k}] {r}" for k, r in enumerate(replies))

    llm = endpoint.llm()
    optimizer = optimizers.OptoPrime([instructions], llm=PeerLLM(llm), objective=task.objective, log=False)
    guide = BudgetedGuide(task.guide, sizes.budget)
    rng = random.Random(seed)
    order: list[int] = []
    with contextlib.redirect_stdout(sys.stderr):
        while guide.used + sizes.batch_size <= sizes.budget:
            if not order:
                order = list(range(len(train)))
                rng.shuffle(order)
            batch, order = order[: sizes.batch_size], order[sizes.batch_size :]
            optimizer.zero_feedback()
            outputs, texts = [], []
            for k, i in enumerate(batch):
                try:
                    out = solve(instructions, train[i]["question"])
                    fb = guide(train[i], out.data)
                except t.ExecutionError as exc:
                    out, fb = exc.exception_node, guide(train[i], RuntimeError(str(exc)))
                outputs.append(out)
                texts.append(f"[{k}] {fb.text or 'correct'}")
            # one output for the minibatch, as trace-opt's examples do: its propagator takes
            # one feedback per graph
            optimizer.backward(together(*outputs), "\n".join(texts))
            try:
                optimizer.step()
            except Exception as exc:  # a reply it could not use: the step changes nothing
                print(f"trace-opt step failed: {exc}", file=sys.stderr)
            peer.clear_graph()

    def app(question: str):
        return app_llm.complete([{"role": "system", "content": instructions.data},
                                 {"role": "user", "content": question}], max_tokens=600)

    test_score = statistics.fmean(float(task.guide(ex, app(ex["question"])).score) for ex in test)
    return Row(task.name, "trace-opt", seed, test_score, guide.used, llm.usage.total_tokens,
               changed=instructions.data != SEED_INSTRUCTION)


def run_one(engine: str, task: Task, seed: int, sizes: Sizes, endpoint: Endpoint) -> Row:
    why = unavailable(engine, task)
    if why:
        return Row(task.name, engine, seed, None, note=why)
    data = task.data(seed, sizes)
    start = time.monotonic()
    if engine == "gepa":
        row = run_gepa(task, seed, sizes, endpoint, data)
    elif engine == "trace-opt":
        row = run_trace_opt(task, seed, sizes, endpoint, data)
    else:
        row = run_ours(engine, task, seed, sizes, endpoint, data)
    row.seconds = time.monotonic() - start
    return row


# -- report ----------------------------------------------------------------------------------


def interval(xs: list[float]) -> str:
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return f"{m:.3f}"
    z = statistics.NormalDist().inv_cdf(0.975)
    df = len(xs) - 1
    tq = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    return f"{m:.3f} ± {tq * statistics.stdev(xs) / math.sqrt(len(xs)):.3f}"


def report(rows: list[Row], sizes: Sizes, endpoint: Endpoint) -> str:
    lines = [
        f"## Quality with a model: {endpoint.model} (optimizer), {endpoint.app_model} (app)",
        "",
        f"{sizes.seeds} seed(s); per seed {sizes.train} train, {sizes.val} validation, up to "
        f"{sizes.test} test examples; budget {sizes.budget} metric calls per run, minibatch "
        f"{sizes.batch_size}. Test score: mean, 95% interval over seeds.",
        "",
        "| task | engine | test score | rollouts | optimizer tokens | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.task, r.engine), []).append(r)
    for (task, engine), rs in groups.items():
        done = [r for r in rs if r.test is not None]
        if not done:
            lines.append(f"| {task} | {engine} | - | - | - | {rs[0].note} |")
            continue
        notes = sorted({r.note for r in rs if r.note})
        lines.append(
            f"| {task} | {engine} | {interval([r.test for r in done])} | "
            f"{statistics.fmean(r.rollouts for r in done):.0f} | "
            f"{statistics.fmean(r.tokens for r in done):,.0f} | {'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


# -- the scripted server's replies, for --tiny against opto_adapters.testing ----------------


def _variables(prompt: str) -> dict[str, str]:
    """The variables of an optimizer prompt (ours, OPRO's, trace-opt's) and their values."""
    section = re.search(r"#Variables\n(.*?)(?:\n\n#|\n\n\[|\Z)", prompt, flags=re.S)
    if not section:
        return {}
    body = section.group(1)
    named = re.findall(r"^\(\w+\) ([^\s=()]+)=", body, flags=re.M)
    if named:  # "(kind) name=value", values running to the next entry
        parts = re.split(r"^\(\w+\) ([^\s=()]+)=", body, flags=re.M)
        return {parts[i]: parts[i + 1].rstrip("\n") for i in range(1, len(parts) - 1, 2)}
    names = re.findall(r"^([^\s=()]+) \(\w+\)$", body, flags=re.M)  # OPRO: "name (kind)"
    values: dict[str, str] = {}
    for name in names:
        found = re.findall(rf"^{re.escape(name)}=(.*?)(?=\n[^\s=()]+=|\n\n|\Z)", prompt, flags=re.M | re.S)
        if found:
            values[name] = found[-1]
    return values


SCRIPTED_HINT = "Give the final answer alone on the last line."


def solve_generated(question: str) -> str | None:
    """The gold answer of a question made by ``GENERATORS`` (the scripted app's knowledge)."""
    if question.startswith("Sort the following words"):
        return " ".join(sorted(question.split("List: ", 1)[1].split()))
    date = re.match(r"Today is (\w+) (\d+), (\d+)\. What is the date (\d+) days (later|earlier)", question)
    if date:
        day = _dt.date(int(date[3]), MONTHS.index(date[1]) + 1, int(date[2]))
        delta = int(date[4]) * (1 if date[5] == "later" else -1)
        return (day + _dt.timedelta(days=delta)).strftime("%m/%d/%Y")
    count = re.match(r"I have (.*)\. How many (.+) do I have\?", question)
    if count:
        singular = {plural(w, 2): w for ws in CATEGORIES.values() for w in ws}
        total = 0
        for item in re.split(r", (?:and )?", count[1]):
            n_text, word = item.split(" ", 1)
            n = NUMBER_WORDS.index(n_text) if n_text in NUMBER_WORDS else int(n_text)
            if singular.get(word, word) in CATEGORIES[count[2]]:
                total += n
        return str(total)
    return None


def _northwind_answers() -> dict[str, str]:
    data = json.loads((ROOT / "recipes" / "data" / "northwind_qa.json").read_text(encoding="utf-8"))
    return {row["question"]: row["answer"] for row in data["train"] + data["val"]}


def scripted_reply(body: dict[str, Any]) -> str:
    """A reply for any request the benchmark sends, for ``--tiny`` against the scripted server
    (opto_adapters.testing): an optimizer's JSON suggestion (each current value with
    ``SCRIPTED_HINT`` added), GEPA's new instruction in a ``` block, or the app's answer, right
    only when the prompt it was given holds the hint (so an accepted change shows on test)."""
    messages = body.get("messages", [])
    prompt = "\n".join(str(m.get("content", "")) for m in messages)
    if "suggestion" in prompt and "#Variables" in prompt:
        values = _variables(prompt)
        suggestion = {k: v.rstrip() + "\n" + SCRIPTED_HINT for k, v in values.items() if SCRIPTED_HINT not in v}
        return json.dumps({"reasoning": "the answers must end with the answer alone", "suggestion": suggestion})
    if "Provide the new instructions within ``` blocks" in prompt:
        current = re.search(r"```\n(.*?)\n```", prompt, flags=re.S)
        text = current.group(1) if current else SEED_INSTRUCTION
        return f"```\n{text}\n{SCRIPTED_HINT}\n```"
    if SCRIPTED_HINT not in prompt:  # a later step repeats an answer an earlier step found
        earlier = re.findall(r"^Answer: (.+)$", prompt, flags=re.M)
        return f"Answer: {earlier[-1]}" if earlier else "I am not sure."
    last = str(messages[-1].get("content", "")) if messages else ""
    gold = solve_generated(last.strip())
    if gold is None:
        gold = next((a for q, a in _northwind_answers().items() if q in prompt), None)
    return f"Answer: {gold}" if gold is not None else "I am not sure."


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description="Quality of each engine with a real model.")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"))
    parser.add_argument("--model", default=os.environ.get("OPTO_MODEL", "gpt-4o-mini"))
    parser.add_argument("--app-model", default=None, help="the app's model (default: --model)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="the variable holding the key")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--budget", type=int, default=None, help="metric calls per run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the mechanics, no quality claim")
    args = parser.parse_args(argv)
    if not args.base_url and not os.environ.get(args.api_key_env):
        parser.error("give --base-url (and the key in $OPENAI_API_KEY) for the endpoint to measure with")
    base = TINY if args.tiny else Sizes()
    sizes = Sizes(base.train, base.val, base.test, args.budget or base.budget, base.batch_size,
                  args.seeds or base.seeds)
    endpoint = Endpoint(
        base_url=args.base_url or "https://api.openai.com/v1",
        api_key=os.environ.get(args.api_key_env) or "not-needed",
        model=args.model, app_model=args.app_model or args.model,
        concurrency=1 if args.tiny else args.concurrency,
    )
    with quiet_trainer():
        rows = run_all(args, parser, sizes, endpoint)
    print(report(rows, sizes, endpoint))
    return rows


@contextlib.contextmanager
def quiet_trainer() -> Iterator[None]:
    """Every run ends at its budget: the trainer's 'training stopped' warning is expected, so
    it is hidden for the benchmark's duration (and the logger's level put back after)."""
    import logging

    log = logging.getLogger("opto_adapters.train")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def run_all(args: argparse.Namespace, parser: argparse.ArgumentParser, sizes: Sizes, endpoint: Endpoint) -> list[Row]:
    rows: list[Row] = []
    for name in args.tasks.split(","):
        task = make_task(name.strip())
        for engine in args.engines.split(","):
            engine = engine.strip()
            if engine not in ENGINES:
                parser.error(f"unknown engine {engine!r}; the engines are {', '.join(ENGINES)}")
            for seed in range(sizes.seeds):
                row = run_one(engine, task, seed, sizes, endpoint)
                rows.append(row)
                print(f"{task.name} {engine} seed {seed}: test {row.test} rollouts {row.rollouts} "
                      f"tokens {row.tokens} changed {row.changed} {row.note}", file=sys.stderr, flush=True)
                if row.test is None:
                    break  # the same reason for every seed
    return rows


if __name__ == "__main__":
    main()
