"""A simulated optimization problem whose truth is known, for benchmarks/bench_search.py.

The app has two trainable prompts, ``plan`` and ``answer``, and is a traced Python callable:
``answer_step(answer, plan_step(plan, question))``. Each example has a kind (arithmetic,
units, dates, lists, names, yes/no) and a difficulty of its own. A prompt is a first line
plus any of twelve catalogued instructions, one a line; each instruction has a home prompt and
changes the log-odds of a right answer by kind when it is there (some help some kinds and hurt
others), and costs a little when put in the other prompt (it never helps there). A run is
right with probability ``sigmoid(base + difficulty + effects)``: the evaluation noise of a
sampled model. So the expected score of any pair of prompts, and the best attainable one, are
known exactly (``World.expected_score``, ``World.oracle``).

A wrong answer shows why it failed (the cause the world drew, weighted by how much each
instruction mattered); the guide names that cause in its feedback (``CUE_RATE`` of the time)
or just says the answer was wrong. ``StandIn`` is the seeded stand-in for the optimizer's LLM:
it edits prompts (adds or removes an instruction), usefully when the feedback names a cause,
at random otherwise. ``StandInOptimizer`` (an ``opto_adapters`` Optimizer, fed through the
trace), ``OproStandIn`` (values and scores only) and ``StandIn.gepa_proposer`` (GEPA's
custom-proposer hook) all use it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from opto_adapters import Feedback, bundle, node
from opto_adapters.optimizers.base import Optimizer, Proposal
from opto_adapters.trace import Parameter

KINDS = ("arithmetic", "units", "dates", "lists", "names", "yesno")
PROMPTS = ("plan", "answer")
BASE = -1.2  # log-odds of a right answer with no instruction
DIFFICULTY = 0.7  # standard deviation of an example's own log-odds offset
WRONG_PROMPT = -0.15  # an instruction in the other prompt only clutters it
CUE_RATE = 0.75  # how often the feedback on a wrong answer names its cause
SEED_PROMPTS = {"plan": "Think about the question.", "answer": "Reply to the question."}


@dataclass(frozen=True)
class Instruction:
    key: str
    home: str
    text: str
    effects: dict[str, float]  # kind -> change in log-odds when in the home prompt
    missing: str  # the feedback when its absence caused a wrong answer
    harm: str  # the feedback when its presence caused one


CATALOGUE: tuple[Instruction, ...] = (
    Instruction("steps", "plan", "Work through the problem step by step.",
                {"arithmetic": 1.6, "dates": 1.0, "yesno": -0.8},
                "the reasoning skipped steps and lost track of the numbers",
                "the reasoning went on in steps when a direct judgement was needed"),
    Instruction("convert", "plan", "Convert every quantity to one unit before computing.",
                {"units": 1.8},
                "quantities in different units were combined as they were",
                "unit conversions were made where none was needed"),
    Instruction("iso", "plan", "Rewrite every date as YYYY-MM-DD before computing.",
                {"dates": 1.6},
                "the dates were misread: month and day were confused",
                "dates were rewritten where none appeared"),
    Instruction("enumerate", "plan", "List every item before counting or sorting.",
                {"lists": 1.8, "names": -0.4},
                "items were miscounted: not every item was listed first",
                "a list was drawn up where the question asked for one name"),
    Instruction("quick", "plan", "Give the first answer that comes to mind.",
                {"arithmetic": -1.0, "dates": -0.6, "yesno": 0.5},
                "the reasoning overthought a simple judgement",
                "the answer was rushed without working it out"),
    Instruction("restate", "plan", "Restate the question in your own words.",
                {kind: 0.1 for kind in KINDS},
                "the question was misunderstood",
                "restating the question changed its meaning"),
    Instruction("number", "answer", "Reply with the number only.",
                {"arithmetic": 1.0, "units": -0.8, "names": -1.0, "lists": -0.8},
                "the number was buried in other text",
                "a bare number was given where words were needed"),
    Instruction("unit", "answer", "Always include the unit in the answer.",
                {"units": 1.4, "arithmetic": -0.3},
                "the answer lacked its unit",
                "a unit was attached to a plain count"),
    Instruction("yesno", "answer", "Begin with yes or no.",
                {"yesno": 1.8},
                "the answer did not say yes or no",
                "a yes or no was forced onto a question that is not one"),
    Instruction("spell", "answer", "Copy names exactly as they are written.",
                {"names": 1.8},
                "the name was misspelled",
                "the names were copied where they should have been changed"),
    Instruction("verbose", "answer", "Explain the answer in a paragraph.",
                {"yesno": 0.3, "arithmetic": -0.5, "lists": -0.5},
                "the answer gave no reason",
                "the answer was lost in a long explanation"),
    Instruction("format", "answer", "Answer in the format the question asks for.",
                {"lists": 0.8, "names": 0.5, "dates": 0.8},
                "the answer ignored the requested format",
                "the requested format was over-applied"),
)
BY_KEY = {i.key: i for i in CATALOGUE}
BY_CUE = {**{i.missing: (i.key, "missing") for i in CATALOGUE}, **{i.harm: (i.key, "harm") for i in CATALOGUE}}
GENERIC = "the answer was wrong"


MISPLACED = "; it came from an instruction in the wrong step"


def cause_of(text: str) -> tuple[str, str] | None:
    """The (instruction key, "missing" | "harm" | "misplaced") a feedback text names, if any."""
    if text.endswith(MISPLACED):
        found = BY_CUE.get(text[: -len(MISPLACED)])
        return (found[0], "misplaced") if found else None
    return BY_CUE.get(text.strip())


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def instructions_in(text: str) -> frozenset[str]:
    """The catalogued instructions a prompt's text contains."""
    return frozenset(i.key for i in CATALOGUE if i.text in text)


def unit_draw(*key: Any) -> float:
    """A uniform number in [0, 1) fixed by ``key`` (the same in every process and thread)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Example:
    id: int
    kind: str
    difficulty: float
    split: str

    def as_dict(self) -> dict[str, Any]:
        return {"input": f"q{self.id} ({self.kind})", "id": self.id, "kind": self.kind,
                "split": self.split, "gold": "right"}


@dataclass(frozen=True)
class Answer:
    """What the app answered: right or not, the cause of a wrong answer, and the prompts' keys."""

    example_id: int
    right: bool
    cause: tuple[str, str] | None  # (instruction key, "missing" | "harm" | "misplaced")
    prompts: tuple[frozenset[str], frozenset[str]]
    draw: int = 0  # how many runs of the same prompts on the same example came before

    def __str__(self) -> str:
        return "right" if self.right else f"wrong ({self.cause[1] if self.cause else 'no cause'})"


def logit_of(kind: str, plan: frozenset[str], answer: frozenset[str]) -> float:
    """Log-odds of a right answer on an example of ``kind`` (difficulty aside)."""
    total = BASE
    for key, prompt in itertools.chain(((k, "plan") for k in plan), ((k, "answer") for k in answer)):
        ins = BY_KEY[key]
        total += ins.effects.get(kind, 0.0) if ins.home == prompt else WRONG_PROMPT
    return total


class World:
    """One seed's data, app and noise. ``rollouts`` counts the app runs scored so far."""

    def __init__(self, seed: int, *, n_train: int = 30, n_val: int = 20, n_test: int = 120) -> None:
        self.seed = seed
        rng = random.Random(seed)
        examples: list[Example] = []
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for k in range(n):
                kind = KINDS[k % len(KINDS)] if split == "test" else rng.choice(KINDS)
                examples.append(Example(len(examples), kind, rng.gauss(0.0, DIFFICULTY), split))
        self.examples = {e.id: e for e in examples}
        self.splits = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test")}
        self._draws: Counter[tuple[Any, ...]] = Counter()
        self._lock = threading.Lock()
        self.log: list[tuple[int, tuple[frozenset[str], frozenset[str]], str, int, float]] = []

    # -- truth ---------------------------------------------------------------------------

    def probability(self, example: Example, plan: frozenset[str], answer: frozenset[str]) -> float:
        return sigmoid(logit_of(example.kind, plan, answer) + example.difficulty)

    def expected_score(self, values: dict[str, str], split: str = "test") -> float:
        """The exact expected score of prompt texts ``values`` on a split (no noise)."""
        plan, answer = instructions_in(values["plan"]), instructions_in(values["answer"])
        return fmean(self.probability(e, plan, answer) for e in self.splits[split])

    def oracle(self, split: str = "test") -> tuple[float, frozenset[str], frozenset[str]]:
        """The best attainable expected score on ``split``, over every set of instructions each
        in its home prompt (an instruction in the other prompt never helps)."""
        plan_keys = [i.key for i in CATALOGUE if i.home == "plan"]
        answer_keys = [i.key for i in CATALOGUE if i.home == "answer"]
        by_kind = Counter(e.kind for e in self.splits[split])
        best = (-1.0, frozenset(), frozenset())
        examples = self.splits[split]
        for mask in range(2 ** len(CATALOGUE)):
            plan = frozenset(k for b, k in enumerate(plan_keys) if mask >> b & 1)
            answer = frozenset(k for b, k in enumerate(answer_keys) if mask >> (b + len(plan_keys)) & 1)
            logits = {kind: logit_of(kind, plan, answer) for kind in by_kind}
            score = fmean(sigmoid(logits[e.kind] + e.difficulty) for e in examples)
            if score > best[0]:
                best = (score, plan, answer)
        return best

    # -- one noisy run -------------------------------------------------------------------

    def run(self, example_id: int, plan_text: str, answer_text: str) -> Answer:
        """Answer one example: right with the true probability; each repeat is a new draw."""
        example = self.examples[example_id]
        plan, answer = instructions_in(plan_text), instructions_in(answer_text)
        key = (self.seed, tuple(sorted(plan)), tuple(sorted(answer)), example_id)
        with self._lock:
            k = self._draws[key]
            self._draws[key] += 1
        right = unit_draw("run", *key, k) < self.probability(example, plan, answer)
        cause = None if right else self._cause(example, plan, answer, unit_draw("cause", *key, k))
        return Answer(example_id, right, cause, (plan, answer), k)

    @staticmethod
    def _cause(example: Example, plan: frozenset[str], answer: frozenset[str], u: float):
        """Why a wrong answer went wrong, drawn by how much each instruction mattered."""
        present = {"plan": plan, "answer": answer}
        causes: list[tuple[float, tuple[str, str]]] = []
        for ins in CATALOGUE:
            effect = ins.effects.get(example.kind, 0.0)
            here = ins.key in present[ins.home]
            if effect > 0 and not here:
                causes.append((effect, (ins.key, "missing")))
            elif effect < 0 and here:
                causes.append((-effect, (ins.key, "harm")))
            other = "answer" if ins.home == "plan" else "plan"
            if ins.key in present[other]:
                causes.append((-WRONG_PROMPT, (ins.key, "misplaced")))
        if not causes:
            return None
        total = sum(w for w, _ in causes)
        u *= total
        for w, cause in causes:
            u -= w
            if u < 0:
                return cause
        return causes[-1][1]

    def feedback(self, out: Answer) -> Feedback:
        """The guide's verdict: 1 and no text when right; else 0 and, ``CUE_RATE`` of the
        time, the cause in words."""
        if out.right:
            return Feedback(score=1.0, text="")
        k = unit_draw("cue", self.seed, out.example_id, sorted(out.prompts[0]), sorted(out.prompts[1]), out.draw)
        if out.cause is None or k >= CUE_RATE:
            return Feedback(score=0.0, text=GENERIC)
        key, how = out.cause
        ins = BY_KEY[key]
        if how == "misplaced":
            text = ins.harm + MISPLACED
        else:
            text = ins.missing if how == "missing" else ins.harm
        return Feedback(score=0.0, text=text)

    def record(self, out: Answer, split: str, score: float) -> None:
        with self._lock:
            self.log.append((len(self.log) + 1, out.prompts, split, out.example_id, score))

    # -- the app as a traced Python callable ----------------------------------------------

    def make_app(self, values: dict[str, str] | None = None):
        """(app, parameters): fresh trainable ``plan`` and ``answer`` prompts and the app."""
        values = values or SEED_PROMPTS
        plan = node(values["plan"], name="plan", trainable=True, kind="prompt",
                    description="instructions for working out the answer")
        answer = node(values["answer"], name="answer", trainable=True, kind="prompt",
                      description="instructions for writing the final answer")
        world = self

        @bundle()
        def plan_step(plan, question):
            """Work out the question following the plan prompt; returns the draft."""
            keys = sorted(instructions_in(plan))
            return {"question": question, "plan": plan, "followed": keys}

        @bundle()
        def answer_step(answer, draft):
            """Write the final answer from the draft following the answer prompt."""
            example_id = int(draft["question"].split()[0][1:])
            return world.run(example_id, draft["plan"], answer)

        def app(question: str):
            return answer_step(answer, plan_step(plan, question))

        return app, [plan, answer]

    def guide(self, example: dict[str, Any], output: Any) -> Feedback:
        """The guide for ``optimize``; every scored run is logged (``log``)."""
        fb = self.feedback(output)
        self.record(output, example["split"], float(fb.score))
        return fb

    def dataset(self, split: str) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.splits[split]]


# -- the stand-in for the optimizer's LLM ----------------------------------------------------


def add_line(text: str, line: str) -> str:
    return text if line in text else text.rstrip() + "\n" + line


def remove_line(text: str, line: str) -> str:
    return "\n".join(x for x in text.split("\n") if x.strip() != line)


class StandIn:
    """A seeded stand-in for the optimizer's LLM: reads feedback, edits prompts.

    Each named cause is acted on (``1 - misread`` of the time): a missing instruction is added
    to its home prompt when that prompt may be edited and the stand-in places it right
    (``locate``), else to another editable prompt; a harmful one is removed; a misplaced one
    is moved home. Without a named cause the edit is random. One edit, or two
    (``two_edits``). Values it was told were rejected (``avoid``) are not proposed again.
    """

    def __init__(self, seed: int, *, locate: float = 0.85, misread: float = 0.1,
                 two_edits: float = 0.35) -> None:
        self.rng = random.Random(seed * 7919 + 17)
        self.locate, self.misread, self.two_edits = locate, misread, two_edits
        self.calls = 0
        self._lock = threading.Lock()

    def propose(self, values: dict[str, str], feedback: Sequence[str], editable: Sequence[str],
                avoid: Iterable[tuple[str, ...]] = ()) -> dict[str, str]:
        """New values for some of ``editable`` (only the changed ones)."""
        with self._lock:
            self.calls += 1
            avoid = set(avoid)
            named = [c for c in map(cause_of, feedback) if c is not None]
            for _ in range(6):
                new = dict(values)
                n = 2 if self.rng.random() < self.two_edits else 1
                pool = Counter(named)
                for _ in range(n):
                    if pool and self.rng.random() >= self.misread:
                        top = max(pool.values())
                        cause = self.rng.choice(sorted(c for c, m in pool.items() if m == top))
                        del pool[cause]
                        self._act(new, cause, editable)
                    else:
                        self._random_edit(new, editable)
                if key_of(new) not in avoid and new != values:
                    break
            return {k: v for k, v in new.items() if v != values[k]}

    def _place(self, home: str, editable: Sequence[str]) -> str:
        others = [p for p in editable if p != home]
        if home in editable and (not others or self.rng.random() < self.locate):
            return home
        return self.rng.choice(others)

    def _act(self, new: dict[str, str], cause: tuple[str, str], editable: Sequence[str]) -> None:
        ins = BY_KEY[cause[0]]
        if cause[1] == "missing":
            where = self._place(ins.home, editable)
            new[where] = add_line(new[where], ins.text)
        elif cause[1] == "harm":
            where = self._place(ins.home, editable)
            if ins.text in new[where]:
                new[where] = remove_line(new[where], ins.text)
            else:  # told it hurts, but it is not here: rephrase the prompt at random
                self._random_edit(new, [where])
        else:  # misplaced: take it out of the prompt(s) it does not belong in, put it home
            for p in editable:
                if p != ins.home:
                    new[p] = remove_line(new[p], ins.text)
            if ins.home in editable:
                new[ins.home] = add_line(new[ins.home], ins.text)

    def _random_edit(self, new: dict[str, str], editable: Sequence[str]) -> None:
        where = self.rng.choice(list(editable))
        present = [i for i in CATALOGUE if i.text in new[where]]
        absent = [i for i in CATALOGUE if i.text not in new[where]]
        if present and (not absent or self.rng.random() < 0.4):
            new[where] = remove_line(new[where], self.rng.choice(present).text)
        else:
            new[where] = add_line(new[where], self.rng.choice(absent).text)

    def gepa_proposer(self, candidate: dict[str, str], reflective_dataset: Any,
                      components_to_update: list[str]) -> dict[str, str]:
        """GEPA's ``custom_candidate_proposer``: edit only the components it asks for."""
        texts = [str(r.get("Feedback", "")) for c in components_to_update
                 for r in reflective_dataset.get(c, [])]
        new = self.propose(candidate, texts, components_to_update)
        return {c: new.get(c, candidate[c]) for c in components_to_update}


def key_of(values: dict[str, str]) -> tuple[str, ...]:
    return tuple(values[p] for p in PROMPTS)


class StandInOptimizer(Optimizer):
    """The stand-in as an ``opto_adapters`` Optimizer: it reads the feedback of the runs whose
    trace reached each prompt (``backward``), may edit every prompt so reached, and remembers
    rejected values (``remember``)."""

    def __init__(self, parameters: Iterable[Parameter], stand_in: StandIn) -> None:
        super().__init__(parameters)
        self.stand_in = stand_in
        self.rejected: list[tuple[str, ...]] = []

    def _propose(self) -> Proposal:
        subs = self.feedback_subgraphs()
        texts = [s.feedback.text for s in subs if s.feedback.text]
        reached = {p.name for s in subs for p in s.parameters_reached}
        editable = [p.name for p in self.parameters if p.name in reached]
        suggestion = self.stand_in.propose(self.current_values(), texts, editable, self.rejected)
        proposal = Proposal(reasoning="stand-in edit")
        self.check(suggestion, proposal)
        return proposal

    def remember(self, values: dict[str, Any], feedback: str) -> None:
        full = {**self.current_values(), **values}
        self.rejected.append(key_of(full))

    def memory_state(self) -> list[Any]:
        return [list(k) for k in self.rejected]

    def restore_memory(self, entries: list[Any]) -> None:
        self.rejected = [tuple(e) for e in entries]


class OproStandIn(Optimizer):
    """Graph-free, OPRO-style: sees only the values tried and their (minibatch) scores; edits
    the best-scoring values at random."""

    def __init__(self, parameters: Iterable[Parameter], stand_in: StandIn) -> None:
        super().__init__(parameters)
        self.stand_in = stand_in
        self.history: list[tuple[float, dict[str, str]]] = []
        self.rejected: list[tuple[str, ...]] = []

    def _propose(self) -> Proposal:
        subs = self.feedback_subgraphs()
        scores = [s.feedback.score for s in subs if s.feedback.score is not None]
        now = self.current_values()
        self.history.append((fmean(scores) if scores else 0.0, now))
        best = max(self.history, key=lambda h: h[0])[1]
        names = [p.name for p in self.parameters]
        new = {**best, **self.stand_in.propose(best, [], names, self.rejected)}
        proposal = Proposal(reasoning="opro stand-in edit")
        self.check({k: v for k, v in new.items() if v != now[k]}, proposal)
        return proposal

    def remember(self, values: dict[str, Any], feedback: str) -> None:
        self.rejected.append(key_of({**self.current_values(), **values}))

    def memory_state(self) -> list[Any]:
        return [list(k) for k in self.rejected]

    def restore_memory(self, entries: list[Any]) -> None:
        self.rejected = [tuple(e) for e in entries]
