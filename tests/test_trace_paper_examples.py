"""The Trace paper's examples as a Trace user writes them, with only the import changed.

Written for this repository (issue 15). Each runs OptoPrime against the scripted
OpenAI-compatible server: the optimizer's replies are scripted suggestions; where the program
itself calls a model (``call_llm``), the same server answers as a small rule-based model, so
what the program does depends on its (trained) prompts. Each example takes optimizer steps
that change its parameters, and the change shows in the program's next run.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

# -- the only lines a Trace program changes -------------------------------------------------
from opto_adapters import trace  # was: from opto import trace
from opto_adapters.optimizers import OptoPrime  # was: from opto.optimizers import OptoPrime

OPTIMIZER_SYSTEM = "You improve the trainable"


class Endpoint:
    """The scripted server as both models: the optimizer's (queued suggestions) and the
    program's (``app(messages) -> text``)."""

    def __init__(self, server: Any, app: Callable[[list[dict[str, str]]], str] | None = None) -> None:
        self.server = server
        self.app = app
        self.suggestions: deque[dict[str, Any]] = deque()
        self.optimizer_prompts: list[str] = []
        server.set_default(self.reply)

    def suggest(self, *suggestions: dict[str, Any]) -> None:
        self.suggestions.extend(suggestions)

    def reply(self, body: dict[str, Any]) -> str:
        messages = body["messages"]
        if messages[0]["content"].startswith(OPTIMIZER_SYSTEM):
            self.optimizer_prompts.append(messages[-1]["content"])
            return json.dumps({"reasoning": "see the feedback", "suggestion": self.suggestions.popleft()})
        assert self.app is not None, "this program calls no model"
        return self.app(messages)


@pytest.fixture
def endpoint(scripted_llm, monkeypatch):
    """OptoPrime(...) and call_llm(...) with no client reach the scripted server, as a Trace
    program's LLM() reaches the configured endpoint."""
    for key, value in scripted_llm.env(model="scripted-model").items():
        monkeypatch.setenv(key, value)
    return Endpoint(scripted_llm)


# == 1. Quickstart: the strange sort =======================================================


@trace.bundle(trainable=True)
def strange_sort_list(lst):
    """Given a list of integers, return it in strange order: the smallest, then the largest
    of the rest, then the smallest of the rest, and so on."""
    lst = sorted(lst)
    return lst


STRANGE_SORT = '''def strange_sort_list(lst):
    """Smallest, largest of the rest, smallest of the rest..."""
    rest = sorted(lst)
    out = []
    while rest:
        out.append(rest.pop(0))
        if rest:
            out.append(rest.pop())
    return out
'''


def test_quickstart_strange_sort_loops_until_its_check_passes(endpoint):
    original = strange_sort_list.parameter.value
    endpoint.suggest({strange_sort_list.parameter.name: STRANGE_SORT})
    try:
        # -- the Trace program -------------------------------------------------------------
        test_input = [1, 2, 3, 4]
        test_output = [1, 4, 2, 3]
        optimizer = OptoPrime(strange_sort_list.parameters())
        epochs = 0
        for _ in range(5):
            epochs += 1
            try:
                output = strange_sort_list(test_input)
                correctness = output.eq(test_output)
                feedback = "test case passed!" if correctness else "test case failed!"
            except trace.ExecutionError as e:
                correctness = e.exception_node
                feedback = correctness.data
            if correctness:
                break
            optimizer.zero_feedback()
            optimizer.backward(correctness, feedback)
            optimizer.step()
        # -----------------------------------------------------------------------------------
        assert epochs == 2 and output.data == [1, 4, 2, 3]
        assert strange_sort_list.parameter.value == STRANGE_SORT
        (prompt,) = endpoint.optimizer_prompts
        assert "eq = eq(x=strange_sort_list, y=y)" in prompt and "test case failed!" in prompt
    finally:
        strange_sort_list.parameter.set(original)


# == 2. Numerical optimization =============================================================


def test_numerical_optimization_with_operators_on_nodes(endpoint):
    # -- the Trace program ---------------------------------------------------------------
    x = trace.node(-1.0, trainable=True)
    endpoint.suggest({x.name: 0.5}, {x.name: 2.0})  # (the scripted optimizer's replies)
    optimizer = OptoPrime([x])

    def loss(x):
        y = x + 1  # the line the issue saw stop
        return y * y - 6 * x + 4  # (x - 2) ** 2 + 1, written through operators on nodes

    history = []
    for _ in range(2):
        output = loss(x)
        history.append((x.data, output.data))
        feedback = f"The output is {output.data}; make it as small as possible."
        optimizer.zero_feedback()
        optimizer.backward(output, feedback)
        optimizer.step()
    history.append((x.data, loss(x).data))
    # -------------------------------------------------------------------------------------
    assert history == [(-1.0, 10.0), (0.5, 3.25), (2.0, 1.0)]
    first = endpoint.optimizer_prompts[0]
    for line in [
        f"add = add(x={x.name}, y=y)",
        "multiply = multiply(x=add, y=add)",
        f"multiply1 = multiply(x=x, y={x.name})",
        "subtract = subtract(x=multiply, y=multiply1)",
        "add1 = add(x=subtract, y=y1)",  # constants are inputs too, named by argument
    ]:
        assert line in first, line
    assert f"(number) {x.name}=-1.0" in first and "make it as small as possible" in first


# == 3. Sales agent with call_llm ==========================================================


@trace.model
class SalesAgent:
    """Greets a customer in their language, by name."""

    def __init__(self, system_prompt):
        self.system_prompt = system_prompt
        self.instruct_language = trace.node("What language is this?", trainable=True)
        self.instruct_name = trace.node("Who is writing?", trainable=True)

    def __call__(self, user_query):
        language = trace.operators.call_llm(self.system_prompt, self.instruct_language, user_query)
        language = self.decide_language(language)
        name = trace.operators.call_llm(self.system_prompt, self.instruct_name, user_query)
        return self.greet(language, name)

    @trace.bundle(trainable=True)
    def decide_language(self, reply):
        """Map the model's reply to 'en' or 'es'."""
        return "en"

    @trace.bundle(trainable=True)
    def greet(self, language, user_name):
        """A greeting in the language, with the name."""
        greeting = "Hello"
        return f"{greeting}, {user_name}!"


def shop_model(messages):
    """The program's model: follows its instruction word for word (a stand-in for a chat
    model, so the instructions the optimizer writes change what it answers)."""
    instruction, query = messages[1]["content"], messages[2]["content"]
    spanish = "hola" in query.lower()
    name = query.rsplit(" ", 1)[-1].strip(".!")
    if "language" in instruction.lower():
        if "one word" in instruction.lower():
            return "Spanish" if spanish else "English"
        return "I think this is written in " + ("Spanish." if spanish else "English.")
    if "only the name" in instruction.lower():
        return name
    return f"The person writing seems to be {name}."


DECIDE = '''def decide_language(self, reply):
    """Map the model's reply to 'en' or 'es'."""
    return "es" if reply.strip().lower() == "spanish" else "en"
'''
GREET = '''def greet(self, language, user_name):
    """A greeting in the language, with the name."""
    greeting = "Hola" if language == "es" else "Hello"
    return f"{greeting}, {user_name}!"
'''


def test_sales_agent_with_call_llm_learns_its_instructions_and_code(endpoint):
    endpoint.app = shop_model
    # -- the Trace program ---------------------------------------------------------------
    agent = SalesAgent("You are a sales assistant.")
    optimizer = OptoPrime(agent.parameters())
    names = [p.name for p in agent.parameters()]
    endpoint.suggest(
        {
            names[0]: DECIDE,
            names[1]: GREET,
            names[2]: "What language is this? Answer in one word.",
            names[3]: "Who is writing? Answer with only the name.",
        }
    )
    query = "Hola, soy Lucia"
    greeting = agent(query)
    before = greeting.data
    optimizer.zero_feedback()
    optimizer.backward(greeting, "Greet in the customer's language, with only their name: 'Hola, Lucia!'")
    optimizer.step()
    after = agent(query).data
    # -------------------------------------------------------------------------------------
    assert names[:2] == ["decide_language_code", "greet_code"]
    assert len(set(names)) == 4  # the two unnamed instructions got distinct names
    assert before == "Hello, The person writing seems to be Lucia.!"
    assert after == "Hola, Lucia!"
    prompt = endpoint.optimizer_prompts[0]
    assert prompt.count("= call_llm(") == 2 and "decide_language = decide_language(self=self" in prompt


# == 4. Traffic light control with a stand-in simulator ====================================


def simulate(ew_green, ns_green, *, ew_rate=0.6, ns_rate=0.2, cycles=20, flow=1.0):
    """A stand-in for the traffic simulator: cars arrive at each rate per second and leave at
    ``flow`` per green second; returns the average number of cars waiting per direction
    (those left over from earlier cycles plus those arriving during the red time)."""
    cycle = ew_green + ns_green + 6  # plus the yellow/all-red time
    queues = {}
    for direction, green, rate in (("EW", ew_green, ew_rate), ("NS", ns_green, ns_rate)):
        left, total = 0.0, 0.0
        for _ in range(cycles):
            left = max(left + rate * cycle - flow * green, 0.0)
            total += left + rate * (cycle - green) ** 2 / (2 * cycle)
        queues[direction] = round(total / cycles, 2)
    return queues


def test_traffic_light_green_times_are_tuned_from_the_simulated_delay(endpoint):
    # -- the Trace program ---------------------------------------------------------------
    MIN_GREEN, MAX_GREEN = 10, 90
    ew_time = trace.node(MIN_GREEN, trainable=True, constraint=f"[{MIN_GREEN}, {MAX_GREEN}]")
    ns_time = trace.node(MIN_GREEN, trainable=True, constraint=f"[{MIN_GREEN}, {MAX_GREEN}]")
    endpoint.suggest(  # (the scripted optimizer's replies)
        {ew_time.name: 40, ns_time.name: 20}, {ew_time.name: 30, ns_time.name: 12}
    )

    @trace.bundle()
    def run_intersection(ew_green, ns_green):
        """Simulate the intersection with these green times (seconds) and return the
        average queue per direction."""
        return simulate(ew_green, ns_green)

    def analyze(queues):
        score = queues["EW"] + queues["NS"]
        return score, (
            f"Average queues: east-west {queues['EW']}, north-south {queues['NS']} cars. "
            "Lower the total."
        )

    optimizer = OptoPrime([ew_time, ns_time])
    scores = []
    for _ in range(2):
        queues = run_intersection(ew_time, ns_time)
        score, feedback = analyze(queues.data)
        scores.append(score)
        optimizer.zero_feedback()
        optimizer.backward(queues, feedback)
        optimizer.step()
    scores.append(analyze(run_intersection(ew_time, ns_time).data)[0])
    # -------------------------------------------------------------------------------------
    assert ew_time.name != ns_time.name
    assert (ew_time.data, ns_time.data) == (30, 12)
    assert scores[0] > scores[1] > scores[2]  # the scripted suggestions really help here
    prompt = endpoint.optimizer_prompts[0]
    assert f"run_intersection = run_intersection(ew_green={ew_time.name}, ns_green={ns_time.name})" in prompt
    assert f"{ew_time.name}: [10, 90]" in prompt  # the constraint is shown


# == 5. Battleship ==========================================================================


class Board:
    """A 4x4 sea with two ships; shots are (row, col)."""

    def __init__(self):
        self.ships = {(0, 1), (0, 2), (3, 3)}
        self.shots: set[tuple[int, int]] = set()

    def view(self):
        return [
            ["x" if (r, c) in self.shots and (r, c) in self.ships else "o" if (r, c) in self.shots else "."
             for c in range(4)]
            for r in range(4)
        ]

    def fire(self, shot):
        self.shots.add(tuple(shot))
        return tuple(shot) in self.ships


@trace.model
class Policy:
    def __call__(self, board_view):
        plan = self.reason(board_view)
        return self.act(plan)

    @trace.bundle(trainable=True)
    def reason(self, board_view):
        """From the board ('.' unknown, 'o' miss, 'x' hit), list the cells worth a shot."""
        return [(r, c) for r, row in enumerate(board_view) for c, cell in enumerate(row)]

    @trace.bundle(trainable=True)
    def act(self, plan):
        """Pick the next shot from the plan."""
        return plan[0]


REASON = '''def reason(self, board_view):
    """Unknown cells next to a hit first, then the other unknown cells."""
    unknown = [(r, c) for r, row in enumerate(board_view) for c, cell in enumerate(row) if cell == "."]
    hits = [(r, c) for r, row in enumerate(board_view) for c, cell in enumerate(row) if cell == "x"]
    near = [p for p in unknown if any(abs(p[0] - h[0]) + abs(p[1] - h[1]) == 1 for h in hits)]
    return near + [p for p in unknown if p not in near]
'''


def test_battleship_policy_improves_its_reasoning_code(endpoint, caplog):
    endpoint.suggest({"reason_code": REASON})
    # -- the Trace program ---------------------------------------------------------------
    policy = Policy()
    optimizer = OptoPrime(policy.parameters())

    def play(turns):
        board = Board()
        hits = 0
        for _ in range(turns):
            try:
                shot = policy(board.view())
                hit = board.fire(shot.data)
                hits += hit
                feedback = "Hit!" if hit else "Miss: never fire twice at the same cell."
            except trace.ExecutionError as e:
                shot, feedback = e.exception_node, e.exception_node.data
            last = (shot, feedback)
        return hits, last

    hits_before, (shot, feedback) = play(4)
    optimizer.zero_feedback()
    optimizer.backward(shot, feedback, visualize=False)
    with caplog.at_level("INFO", logger="opto_adapters"):
        optimizer.step(verbose=True)
    hits_after, _ = play(4)
    # -------------------------------------------------------------------------------------
    assert [p.name for p in policy.parameters()] == ["reason_code", "act_code"]
    assert hits_before == 0 and hits_after == 2  # the first policy fires at (0, 0) forever
    prompt = endpoint.optimizer_prompts[0]
    assert "reason = reason(self=self, board_view=board_view, __code=reason_code)" in prompt
    assert "act = act(self=self, plan=reason, __code=act_code)" in prompt
    assert "never fire twice" in prompt
    assert "optimizer prompt:" in caplog.text and "reason_code" in caplog.text  # verbose=True
