"""Rollouts on a Ray cluster: each worker (a Ray actor) holds its own copy of the app.

The driver keeps everything that decides (backward, proposals, gating, the store); a worker
sets the candidate's values (parameter name -> value), runs the example with the tracer,
scores it with the guide and sends back an ``Outcome`` whose graph is data (``graph_json``,
rebuilt on the driver over the live parameters by ``graphs.graph_from_json``).

How a worker gets the app, in this order: ``app_factory()`` (a function that builds it,
called once in each worker), the app itself shipped as Ray ships any object (cloudpickle),
or, when it cannot be pickled, rebuilt from the recipe file (``recipe=``; the CLI passes
it). The cluster: ``ray.init(address=address)``, else the one this process already joined,
else a local one started here (and shut down when the executor closes).

A worker that dies or is lost (``lost``) takes its examples with it: the engine submits them
again and this executor starts a replacement worker; the store's ``attempts`` says how many
tries an evaluation took. Ray is imported only when this executor is opened.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..llm import BudgetExceeded
from ..trace import Module, Parameter, apply_updates
from ..trace.bundle import Bundle
from .apps import PythonApp, as_tracer
from .errors import AppError, InfrastructureError
from .executors import Executor
from .runner import Outcome, Runner

__all__ = ["RayExecutor"]

logger = logging.getLogger("opto_adapters.train")

_INSTALL = 'Ray is not installed: pip install "opto-adapters[ray]" (or pip install ray)'


@dataclass
class _Raised:
    """An error a worker must not swallow, sent back as data (``kind``: infra or budget)."""

    kind: str
    message: str
    failure_kind: str = "connection"
    url: str | None = None

    def exception(self) -> Exception:
        if self.kind == "budget":
            return BudgetExceeded(self.message, calls_used=0, tokens_used=0, max_calls=None, max_tokens=None)
        return InfrastructureError(self.message, kind=self.failure_kind, url=self.url)


@dataclass
class _Spec:
    """What a worker is sent once (pickled): how to get the app, and how to score it."""

    app: Any
    factory: Callable[[], Any] | None
    parameters: list[Parameter] | None
    inputs: dict[str, list[Any]]
    examples: dict[str, list[Any]]
    guide: Any
    error_score: float
    retries: int


class RayWorker:
    """One Ray actor: its own app and tracer; runs the calls of one version at a time (a call
    with other values waits until the calls in flight with the current ones are done)."""

    def __init__(self, recipe: str | None, blob: bytes) -> None:
        import ray.cloudpickle as cloudpickle

        loaded = None
        if recipe is not None:  # first: functions of the recipe module unpickle by reference
            from .recipe import load_recipe

            loaded = load_recipe(recipe)
        spec: _Spec = cloudpickle.loads(blob)
        parameters = spec.parameters
        if spec.factory is not None:
            app = spec.factory()
        elif spec.app is not None:
            app = spec.app
        elif loaded is not None:
            app, parameters = loaded.build_app(), loaded.parameters
        else:
            raise AppError("the Ray worker was sent no app, no app_factory and no recipe")
        tracer = as_tracer(app, parameters=parameters) if parameters else as_tracer(app)
        self.runner = Runner(
            tracer=tracer, inputs=spec.inputs, examples=spec.examples, guide=spec.guide,
            error_score=spec.error_score, retries=spec.retries, graph_json=True,
        )
        self._by_name = _live_parameters(tracer)
        self._key: int | None = None
        self._active = 0
        self._turn = threading.Condition()

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, key: int, values: dict[str, Any], split: str, i: int) -> Outcome | _Raised:
        with self._turn:
            while self._key != key and self._active:
                self._turn.wait()
            if self._key != key:
                self._set(values, split, i)
                self._key = key
            self._active += 1
        try:
            outcome = self.runner.run(split, i)
        except InfrastructureError as exc:
            return _Raised("infra", str(exc), exc.kind, exc.url)
        except BudgetExceeded as exc:
            return _Raised("budget", str(exc))
        finally:
            with self._turn:
                self._active -= 1
                self._turn.notify_all()
        outcome.graph = None  # the graph travels as graph_json
        return outcome

    def _set(self, values: dict[str, Any], split: str, i: int) -> None:
        missing = [n for n in values if n not in self._by_name]
        tracer = self.runner.tracer
        if missing and isinstance(tracer, PythonApp):  # parameters a run reaches
            tracer.discover(self.runner.inputs[split][i])
            self._by_name = {**_live_parameters(tracer), **self._by_name}
            missing = [n for n in values if n not in self._by_name]
        if missing:
            raise AppError(
                f"the Ray worker's copy of the app has no parameter(s) {missing} (it has "
                f"{sorted(self._by_name)}): parameters added to a tracer by hand do not travel "
                "with the app; pass RayExecutor(app_factory=...) returning the tracer with them"
            )
        apply_updates({self._by_name[n]: v for n, v in values.items()})


def _live_parameters(tracer: Any) -> dict[str, Parameter]:
    """The tracer's parameters by name; for a plain function, the parameters its code reaches
    through its globals and closures override copies shipped beside it (a function pickled by
    reference uses its module's own)."""
    found = {p.name: p for p in getattr(tracer, "_parameters", None) or tracer.parameters}
    if isinstance(tracer, PythonApp):
        found.update({p.name: p for p in _reachable(tracer.fn, set(), 0)})
    return found


def _reachable(obj: Any, seen: set[int], depth: int) -> list[Parameter]:
    if id(obj) in seen or depth > 6:
        return []
    seen.add(id(obj))
    if isinstance(obj, Parameter):
        return [obj]
    if isinstance(obj, Module):
        return list(obj.parameters())
    if isinstance(obj, Bundle):
        found = [obj.parameter] if obj.parameter is not None else []
        return found + _reachable(obj.fn, seen, depth + 1)
    code = getattr(obj, "__code__", None)
    if code is None:
        return []
    out: list[Parameter] = []
    scope = getattr(obj, "__globals__", {})
    for name in code.co_names:
        if name in scope:
            out += _reachable(scope[name], seen, depth + 1)
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            out += _reachable(cell.cell_contents, seen, depth + 1)
        except ValueError:
            continue
    return out


class RayExecutor(Executor):
    """Evaluations as calls to Ray actors, ``workers`` of them (default: the cluster's CPUs,
    at most ``max_concurrency``), each running up to ``ceil(max_concurrency / workers)`` at a
    time (``max_concurrency``: default the trainer's). ``address``: the cluster (``ray.init(address=...)``); ``app_factory``: builds the app
    in each worker; ``recipe``: the recipe file to rebuild it from; ``num_cpus``: CPUs each
    worker reserves; ``max_attempts``: tries of one evaluation whose workers are lost."""

    name = "ray"

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        address: str | None = None,
        workers: int | None = None,
        app_factory: Callable[[], Any] | None = None,
        recipe: str | os.PathLike[str] | None = None,
        num_cpus: float = 1,
        max_attempts: int = 3,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if app_factory is not None and not callable(app_factory):
            raise TypeError(f"app_factory must be a function that builds the app, got {type(app_factory).__name__}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int or None (the cluster's CPUs), got {workers!r}")
        self.max_concurrency, self.address, self.workers = max_concurrency, address, workers
        self.app_factory, self.recipe = app_factory, None if recipe is None else str(recipe)
        self.num_cpus, self.max_attempts = num_cpus, max_attempts
        self.init_options = dict(init_options or {})
        self._ray: Any = None
        self._started = False
        self._actor_class: Any = None
        self._spec: tuple[str | None, Any] | None = None
        self._actors: list[Any] = []
        self._load: dict[Any, int] = {}
        self._dead: set[Any] = set()
        self._refs: dict[Future[Any], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._key = 0
        self._values: dict[str, Any] = {}
        self.app: Any = None  # set by the engine's owner: the object the user passed

    @property
    def needs_graph_json(self) -> bool:
        return True

    def open(self, runner: Runner) -> None:
        super().open(runner)
        self.max_concurrency = self.max_concurrency or 4
        try:
            import ray
        except ImportError as exc:
            raise ImportError(_INSTALL) from exc
        self._ray = ray
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            if self.address is not None:
                ray.init(address=self.address, **options)
            else:
                ray.init(**options)
                self._started = True
        elif self.address is not None:
            logger.info("Ray is already initialized here: using that cluster, not %s", self.address)
        blob = self._pickled(runner)
        self._spec = (self.recipe, ray.put(blob))
        cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        self.workers = self.workers or max(1, min(cpus, self.max_concurrency))
        per_worker = max(1, math.ceil(self.max_concurrency / self.workers))
        self._actor_class = ray.remote(RayWorker).options(
            max_concurrency=per_worker, num_cpus=self.num_cpus, max_restarts=0, max_task_retries=0,
        )
        for _ in range(self.workers):
            self._spawn()
        # a worker that cannot build the app says so now, not once per example
        ray.get([a.pid.remote() for a in self._actors])

    def _pickled(self, runner: Runner) -> bytes:
        import ray.cloudpickle as cloudpickle

        tracer = runner.tracer
        if isinstance(tracer, PythonApp):
            app, parameters = tracer.fn, list(getattr(tracer, "_parameters", tracer.parameters))
        else:
            app, parameters = getattr(tracer, "target", None) or self.app or tracer, None
        spec = _Spec(
            app=None if self.app_factory is not None else app, factory=self.app_factory,
            parameters=parameters if self.app_factory is None else None,
            inputs=runner.inputs, examples=runner.examples, guide=runner.guide,
            error_score=runner.error_score, retries=runner.retries,
        )
        try:
            return cloudpickle.dumps(spec)
        except Exception as exc:
            error: Exception = exc
        if self.app_factory is None and self.recipe is not None:
            spec.app = spec.parameters = None  # the app does not travel: rebuilt from the recipe
            try:
                return cloudpickle.dumps(spec)
            except Exception as exc:
                error = exc
        what = "the app" if self.app_factory is None else "app_factory"
        raise AppError(
            f"{what} (or the guide, or the examples) cannot be sent to Ray workers: "
            f"cloudpickle failed with {type(error).__name__}: {error}. Pass "
            "RayExecutor(app_factory=build_app), a module-level function that builds the "
            "app in each worker, or run a recipe (opto-adapters optimize recipe.py "
            "--executor ray), whose workers rebuild the app from the file"
            + ("" if self.recipe is None else f" (the recipe {self.recipe} did not help: the guide or the examples do not pickle)")
        ) from error

    def _spawn(self) -> Any:
        assert self._spec is not None
        actor = self._actor_class.remote(*self._spec)
        with self._lock:
            self._actors.append(actor)
            self._load[actor] = 0
        return actor

    def begin(self, version: int, values: dict[str, Any]) -> None:
        self._key += 1  # a new batch: workers set these values before running it
        self._values = dict(values)

    def submit(self, split: str, i: int) -> Future[Outcome]:
        with self._lock:
            for actor in [a for a in self._actors if a in self._dead]:
                self._actors.remove(actor)
                self._load.pop(actor, None)
            missing = (self.workers or 1) - len(self._actors)
        for _ in range(missing):
            logger.warning("a Ray worker was lost: starting another one")
            self._spawn()
        with self._lock:
            actor = min(self._actors, key=lambda a: self._load[a])
            self._load[actor] += 1
        ref = actor.evaluate.remote(self._key, self._values, split, i)
        out: Future[Outcome] = Future()
        out.set_running_or_notify_cancel()
        with self._lock:
            self._refs[out] = (ref, actor)
        ref.future().add_done_callback(lambda f: self._finished(out, actor, f))
        return out

    def _finished(self, out: Future[Outcome], actor: Any, done: Future[Any]) -> None:
        with self._lock:
            self._refs.pop(out, None)
            if actor in self._load:
                self._load[actor] -= 1
        try:
            value = done.result()
        except BaseException as exc:
            if self.lost(exc):
                with self._lock:
                    self._dead.add(actor)
            out.set_exception(exc)
            return
        if isinstance(value, _Raised):
            out.set_exception(value.exception())
        else:
            out.set_result(value)

    def lost(self, exc: BaseException) -> bool:
        ray = self._ray
        if ray is None:
            return False
        errors = ray.exceptions
        kinds = tuple(
            getattr(errors, name)
            for name in ("RayActorError", "WorkerCrashedError", "ObjectLostError", "NodeDiedError", "OwnerDiedError")
            if hasattr(errors, name)
        )
        return isinstance(exc, kinds)

    def settle(self, futures: Iterable[Future[Any]], *, interrupted: bool, grace: float) -> None:
        """Cancel every call not finished; nothing is waited for: a worker's runs use its
        own copy of the app, never the driver's live values."""
        futures = list(futures)
        with self._lock:
            refs = [self._refs[f][0] for f in futures if f in self._refs]
        for ref in refs:
            try:
                self._ray.cancel(ref)
            except Exception:  # already finished, or its worker is gone
                logger.debug("could not cancel a Ray call", exc_info=True)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        with self._lock:
            actors, self._actors = self._actors, []
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:
                logger.debug("could not stop a Ray worker", exc_info=True)
        if self._started:
            ray.shutdown()
        self._ray = None
