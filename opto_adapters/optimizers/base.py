"""The optimizer contract: feedback in, suggested values out, applied atomically."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..trace import Feedback, Graph, Node, Parameter, Subgraph, ValidationError, apply_updates
from ..trace import backward as trace_backward
from ..trace.coercion import differs
from ..trace.parameters import parameters_by_name
from ..trace.tracer import TracedRun

__all__ = ["Optimizer", "PendingProposal", "Proposal", "StepRecord"]

logger = logging.getLogger("opto_adapters.optimizers")


@dataclass
class Proposal:
    """What an optimizer suggests; nothing is changed until ``Optimizer.apply``.

    ``values`` holds the suggestions that are typed and valid, by parameter name; ``rejected``
    says why each other suggestion was refused. ``error`` is set when no usable reply came
    back (not JSON, empty, cut at ``max_tokens``, the endpoint failed after its retries), and
    ``cause`` holds the exception behind it; ``unanswered`` when the request itself failed (no
    reply at all: unreachable, timed out, refused, over the context, past the deadline), which
    says nothing about the values and is not a finished proposal. ``truncated``: the reply was
    cut at ``max_tokens``.
    """

    values: dict[str, Any] = field(default_factory=dict)
    reasoning: str = ""
    rejected: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    terminated: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)
    raw: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    unanswered: bool = False
    truncated: bool = False
    cause: BaseException | None = field(default=None, repr=False, compare=False)
    # the values ``check`` typed and validated, as it made them (a value replaced since then
    # is not one of them): ``step`` writes those without validating them again
    _checked: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # the values the proposal was made from (``prepare``): a suggestion is new if it differs
    # from these, whatever the parameters hold when the reply comes back
    basis: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def prompt(self) -> str:
        """The messages sent, as one text."""
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self.messages)


class PendingProposal:
    """A proposal whose request is made (from the feedback and values at ``prepare`` time)
    but not yet sent: ``run()`` sends it, ``await arun()`` too without blocking the loop.
    Several can be sent at once (the search's parallel proposals): each holds its own prompt.
    Either call returns the ``Proposal``; a failure in it is one, as with ``propose``."""

    def __init__(
        self,
        run: Callable[[], Proposal],
        arun: Callable[[], Awaitable[Proposal]] | None = None,
        *,
        fatal: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._run, self._arun, self._fatal = run, arun, fatal

    @classmethod
    def ready(cls, proposal: Proposal) -> PendingProposal:
        """One whose proposal is already made (an optimizer that cannot defer its call)."""
        return cls(lambda: proposal)

    def run(self) -> Proposal:
        try:
            return self._run()
        except self._fatal:
            raise
        except Exception as exc:
            return _failed_proposal(exc)

    async def arun(self) -> Proposal:
        if self._arun is None:
            import asyncio

            return await asyncio.to_thread(self.run)
        try:
            return await self._arun()
        except self._fatal:
            raise
        except Exception as exc:
            return _failed_proposal(exc)


@dataclass
class StepRecord:
    """What one ``step`` did: the proposal, what changed (``applied``: name -> (old, new)),
    what was refused and why."""

    step: int
    proposal: Proposal
    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.applied)


class Optimizer:
    """Base optimizer over a list of parameters.

    Subclasses implement ``_propose`` (and may implement ``_apropose``, its awaitable twin;
    by default it runs ``_propose`` in a worker thread). ``backward`` records feedback on the
    parameters, ``propose`` asks for new values (changing nothing), ``apply`` validates and
    writes them all at once through the parameters' bindings, ``step`` does both and keeps a
    record; ``apropose`` and ``astep`` are the same, awaited. A failure while proposing or
    applying becomes the record's ``error``, except the ``fatal_errors`` the caller must act
    on (they are raised).
    """

    fatal_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, parameters: Iterable[Parameter]) -> None:
        # one parameter alone is a node, and nodes iterate over their value: take it whole
        params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
        if not params:
            raise ValueError(
                "the optimizer got no parameters: pass tracer.parameters or module.parameters(), "
                "and check that include/exclude patterns left some"
            )
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"optimizers take Parameter objects, got {type(p).__name__}: {p!r:.80}; "
                    "make values trainable with node(value, trainable=True)"
                )
        self.parameters: list[Parameter] = list(parameters_by_name(params).values())
        self.records: list[StepRecord] = []
        self._lock = threading.Lock()

    # -- copies (copy.deepcopy and pickle: the locks are made anew) ---------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_memory_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._memory_lock = threading.Lock()

    # -- feedback ----------------------------------------------------------------------------

    def zero_feedback(self) -> None:
        """Forget the feedback accumulated on the parameters."""
        for p in self.parameters:
            p.zero_feedback()

    def backward(
        self,
        output: Node | Graph | TracedRun,
        feedback: str | float | Feedback,
        *,
        retain_graph: bool = True,
        visualize: bool = False,
    ) -> Subgraph:
        """Propagate ``feedback`` on a run's output (a node, a graph, or a ``TracedRun``).
        ``retain_graph`` and ``visualize`` are accepted for Trace programs (the graph is never
        consumed; the returned subgraph draws itself with ``.to_dot()``)."""
        if isinstance(output, TracedRun):
            if output.graph is None:
                raise ValueError("this run has no graph: was the tracer attached when it ran?")
            output = output.graph
        sub = trace_backward(output, feedback)
        mine = {id(p) for p in self.parameters}
        if not any(id(p) in mine for p in sub.parameters_reached):
            logger.warning(
                "feedback on %r reaches none of this optimizer's parameters %s",
                sub.output.name,
                [p.name for p in self.parameters],
            )
        return sub

    def feedback_subgraphs(self) -> list[Subgraph]:
        """The distinct subgraphs recorded on this optimizer's parameters, oldest first."""
        seen: set[int] = set()
        subs: list[Subgraph] = []
        for p in self.parameters:
            for sub in p.propagated():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    subs.append(sub)
        return subs

    # -- proposing and applying -------------------------------------------------------------

    def propose(self) -> Proposal:
        """Ask for new values from the accumulated feedback; changes nothing."""
        self._require_feedback()
        try:
            return self._propose()
        except self.fatal_errors:
            raise
        except Exception as exc:  # e.g. a value too deep to render, a failing binding read
            return _failed_proposal(exc)

    async def apropose(self) -> Proposal:
        """:meth:`propose`, awaited (the LLM call does not block the event loop)."""
        self._require_feedback()
        try:
            return await self._apropose()
        except self.fatal_errors:
            raise
        except Exception as exc:
            return _failed_proposal(exc)

    def prepare(self) -> PendingProposal:
        """Make the next proposal's request from the feedback and values now, to send later
        (``run``/``arun``), beside others made from other feedback; changes nothing. An
        optimizer that cannot defer its call makes the proposal here."""
        self._require_feedback()
        try:
            return self._prepare()
        except self.fatal_errors:
            raise
        except Exception as exc:
            return PendingProposal.ready(_failed_proposal(exc))

    def _prepare(self) -> PendingProposal:
        return PendingProposal.ready(self.propose())

    def _require_feedback(self) -> None:
        if not any(p.propagated() for p in self.parameters):
            raise RuntimeError(
                "no feedback to optimize from: call optimizer.backward(output, feedback) on at "
                "least one run that used these parameters first"
            )

    def _propose(self) -> Proposal:
        raise NotImplementedError

    async def _apropose(self) -> Proposal:
        """By default ``_propose`` in a worker thread (an optimizer with a blocking call)."""
        import asyncio  # (here: importing the optimizers must not load asyncio)

        return await asyncio.to_thread(self._propose)

    def current_values(self) -> dict[str, Any]:
        return {p.name: p.peek() for p in self.parameters}

    def check(self, suggestion: Mapping[str, Any], proposal: Proposal) -> None:
        """Type and validate raw suggestions into ``proposal.values`` / ``proposal.rejected``."""
        by_name = {p.name: p for p in self.parameters}
        for raw_name, value in suggestion.items():
            param = by_name.get(raw_name)  # (the usual reply names them exactly)
            name = raw_name
            if param is None:
                name = str(raw_name).strip().lstrip("#").strip()
                param = by_name.get(name)
            if param is None:
                proposal.rejected[str(raw_name)] = (
                    f"no variable named {raw_name!r}; the variables are {sorted(by_name)}"
                )
                continue
            try:
                typed = param.convert(value)
            except ValidationError as exc:
                proposal.rejected[name] = exc.errors.get(name, str(exc))
                continue
            basis = proposal.basis
            if differs(typed, basis[name] if basis is not None and name in basis else param.peek()):
                proposal.values[name] = typed
                proposal._checked[name] = typed

    def apply(self, update: Proposal | Mapping[str, Any]) -> StepRecord:
        """Validate and write new values all at once; returns what changed.

        Names that are not parameters, or values that fail validation, are refused and
        reported; the valid ones are written together (all or none if a binding fails).
        """
        if isinstance(update, Proposal):
            return self._apply(update, fresh=False)
        proposal = Proposal()
        self.check(update, proposal)
        return self._apply(proposal, fresh=True)

    def _apply(self, proposal: Proposal, *, fresh: bool) -> StepRecord:
        """``fresh``: the proposal was checked just now (nothing changed since), so the values
        ``check`` made are written without a second validation; any other is validated."""
        by_name = {p.name: p for p in self.parameters}
        targets: dict[Parameter, Any] = {}
        checked: list[Parameter] = []
        made = proposal._checked if fresh else {}
        for name, value in proposal.values.items():
            param = by_name[name]
            targets[param] = value
            if made.get(name) is value:
                checked.append(param)
        record = StepRecord(step=len(self.records), proposal=proposal, error=proposal.error)
        record.rejected.update(proposal.rejected)
        try:
            previous = apply_updates(targets, checked=checked)
        except ValidationError as exc:  # a value changed validity since it was proposed
            record.rejected.update(exc.errors)
            record.error = record.error or str(exc)
            return record
        except self.fatal_errors:
            raise
        except Exception as exc:  # a binding failed: apply_updates put the old values back
            logger.warning("the optimizer could not write its proposal", exc_info=True)
            record.error = f"the new values could not be written: {_reason(exc)}"
            return record
        record.applied = {p.name: (old, p.peek()) for p, old in previous.items()}
        return record

    def step(self, verbose: bool | str = False) -> StepRecord:
        """``propose`` then ``apply``; the record is kept in ``records``. ``verbose`` (as in
        Trace) logs the prompt, the reply and the changes at INFO level."""
        # the proposal was checked just now: it is written without validating it again
        return self._record(self._apply(self.propose(), fresh=True), verbose)

    async def astep(self, verbose: bool | str = False) -> StepRecord:
        """:meth:`step`, awaited: ``apropose`` then ``apply`` (the same record, the same values).
        Nothing is awaited between the check of the reply and its writing."""
        proposal = await self.apropose()
        return self._record(self._apply(proposal, fresh=True), verbose)

    def _record(self, record: StepRecord, verbose: bool | str) -> StepRecord:
        proposal = record.proposal
        if verbose:
            prompt = proposal.messages[-1]["content"] if proposal.messages else ""
            logger.info("optimizer prompt:\n%s\noptimizer reply:\n%s", prompt, proposal.raw)
            logger.info("optimizer step applied %s", record.applied or "nothing")
        with self._lock:
            record.step = len(self.records)
            self.records.append(record)
        if record.error:
            logger.warning("optimizer step %d changed nothing: %s", record.step, record.error)
        for name, reason in record.rejected.items():
            logger.info("optimizer step %d rejected %s: %s", record.step, name, reason)
        return record


def _failed_proposal(exc: BaseException) -> Proposal:
    logger.warning("the optimizer could not make a proposal", exc_info=exc)
    return Proposal(error=f"the optimizer could not make a proposal: {_reason(exc)}")


def _reason(exc: BaseException, limit: int = 500) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."

