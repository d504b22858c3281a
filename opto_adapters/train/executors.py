"""Where the evaluation engine's app runs happen: threads, an asyncio event loop, or Ray.

An executor takes evaluations (``submit(split, i)``) and hands back a
``concurrent.futures.Future`` of their ``Outcome``, so the engine waits, checks the time limit,
stores and stops the same way whichever runs them:

- ``ThreadExecutor`` (``executor="threads"``, the default): ``max_concurrency`` threads
  call the app's sync entry point (``tracer.run``); with ``max_concurrency=1`` the engine runs
  them one by one in its own thread.
- ``AsyncioExecutor`` (``executor="asyncio"``): coroutines through the app's async entry
  point (``tracer.arun``: ``ainvoke``, ``aquery``/``achat``, agents' runs, async traced
  callables), at most ``max_concurrency`` in flight, on one event loop: the caller's
  (``Trainer.afit``) or a private one in a single thread (``fit``).
- ``RayExecutor`` (``executor="ray"``, ``opto_adapters.train.ray_executor``): Ray actors,
  each with its own copy of the app.

The driver writes a version's values into the live app before it evaluates it and waits for
every run of it before writing others (``settle``), so one version's values are live at a time.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Coroutine, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .runner import Outcome, Runner

__all__ = ["EXECUTORS", "AsyncioExecutor", "Executor", "ThreadExecutor", "make_executor"]

logger = logging.getLogger("opto_adapters.train")

EXECUTORS = ("threads", "asyncio", "ray")
"""The executors by name (``TrainConfig.executor``)."""

TICK = 0.25  # seconds between checks (time limit, Ctrl-C) while runs are in flight


class Executor:
    """Runs evaluations for the engine. ``open`` gives it the ``Runner`` and the values of
    the version about to be evaluated (``begin``); ``submit`` returns a future of the outcome;
    ``settle`` drops what was submitted and waits (bounded) for what is still running."""

    name = "executor"
    inline = False  # True: the engine calls runner.run itself, one example at a time

    def __init__(self) -> None:
        self.stopping = threading.Event()  # set while the engine stops: retries give up
        self.runner: Runner | None = None

    @property
    def needs_graph_json(self) -> bool:
        """Whether outcomes must carry the graph as data (it crosses a process boundary)."""
        return False

    def open(self, runner: Runner) -> None:
        self.runner = runner

    def begin(self, version: int, values: dict[str, Any]) -> None:
        """The version whose values are live in the app for the next submissions."""

    def submit(self, split: str, i: int) -> Future[Outcome]:
        raise NotImplementedError

    def lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the worker was lost (the example is run again elsewhere)."""
        return False

    def settle(self, futures: Iterable[Future[Any]], *, interrupted: bool, grace: float) -> None:
        """Cancel what has not started, wait up to ``grace`` s for the rest (see ``settle``)."""
        settle(futures, interrupted=interrupted, grace=grace)

    def close(self) -> None:
        """Release the workers (nothing is in flight: the engine settles first)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop async optimizer calls may run on, if the executor has one."""
        return None


class ThreadExecutor(Executor):
    """``max_concurrency`` threads over the app's sync entry point."""

    name = "threads"

    def __init__(self, max_concurrency: int) -> None:
        super().__init__()
        self.max_concurrency = max_concurrency
        self.inline = max_concurrency <= 1
        self._pool: ThreadPoolExecutor | None = None

    def open(self, runner: Runner) -> None:
        super().open(runner)
        if not self.inline:
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="opto-train")

    def submit(self, split: str, i: int) -> Future[Outcome]:
        assert self._pool is not None and self.runner is not None
        context = contextvars.copy_context()  # the caller's context vars reach the app run
        return self._pool.submit(context.run, self.runner.run, split, i, self.stopping)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class AsyncioExecutor(Executor):
    """Coroutines on one event loop, at most ``max_concurrency`` in flight (a semaphore).

    ``loop``: an event loop running in another thread (``Trainer.afit`` passes the caller's);
    ``None`` starts a private loop in one thread for the executor's lifetime."""

    name = "asyncio"

    def __init__(self, max_concurrency: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self.max_concurrency = max_concurrency
        self._given = loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: dict[Future[Any], asyncio.Task[Any]] = {}
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def open(self, runner: Runner) -> None:
        super().open(runner)
        if self._given is not None:
            self._loop = self._given
            return
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="opto-asyncio", daemon=True)
        self._thread.start()
        started.wait()
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None = None) -> Future[Any]:
        """Run ``coro`` as a task on the loop (in ``context``); a future of its result."""
        loop = self._loop
        assert loop is not None
        future: Future[Any] = Future()
        context = context or contextvars.copy_context()

        def start() -> None:
            if not future.set_running_or_notify_cancel():
                coro.close()
                return
            task = context.run(loop.create_task, coro)
            with self._lock:
                self._tasks[future] = task
            task.add_done_callback(lambda t: self._finished(future, t))

        loop.call_soon_threadsafe(start)
        return future

    def _finished(self, future: Future[Any], task: asyncio.Task[Any]) -> None:
        with self._lock:
            self._tasks.pop(future, None)
        if task.cancelled():
            future.set_exception(asyncio.CancelledError("the app run was cancelled"))
        elif task.exception() is not None:
            future.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            future.set_result(task.result())

    def submit(self, split: str, i: int) -> Future[Outcome]:
        return self.run(self._one(split, i))

    async def _one(self, split: str, i: int) -> Outcome:
        if self._semaphore is None:  # made on the loop it guards
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        assert self.runner is not None
        async with self._semaphore:
            return await self.runner.arun(split, i, self.stopping)

    def settle(self, futures: Iterable[Future[Any]], *, interrupted: bool, grace: float) -> None:
        """Cancel every task (a coroutine stops at its next ``await``) and wait up to
        ``grace`` s for them to end, so no run is left to see the next version's values."""
        futures = list(futures)
        loop = self._loop
        for f in futures:
            f.cancel()  # not started yet: never starts
        wanted = set(futures)
        with self._lock:
            tasks = [t for f, t in self._tasks.items() if f in wanted]
        if loop is not None and tasks:
            for task in tasks:
                loop.call_soon_threadsafe(task.cancel)
        settle([f for f in futures if not f.cancelled()], interrupted=interrupted, grace=grace)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._semaphore = None
        if thread is None or loop is None:  # the caller's loop: not ours to stop
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()


def make_executor(executor: str | Executor, *, max_concurrency: int, loop: asyncio.AbstractEventLoop | None = None, **ray_options: Any) -> Executor:
    """The executor for a name (``EXECUTORS``), or ``executor`` itself if it is one."""
    if isinstance(executor, Executor):
        return executor
    if executor == "threads":
        return ThreadExecutor(max_concurrency)
    if executor == "asyncio":
        return AsyncioExecutor(max_concurrency, loop)
    if executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(max_concurrency=max_concurrency, **ray_options)
    raise ValueError(f"executor must be one of {list(EXECUTORS)} or an Executor, got {executor!r}")


def settle(futures: Iterable[Future[Any]], *, interrupted: bool, grace: float | None = None) -> None:
    """Cancel the runs not started and wait for those in flight (their results are dropped),
    so the parameters are not changed under a running app. After Ctrl-C a second Ctrl-C
    stops waiting; otherwise (the time limit, an error) at most ``grace`` seconds are waited."""
    running = [f for f in futures if not f.cancel() and not f.done()]
    if not running:
        return
    if interrupted:
        logger.warning(
            "waiting up to %.0f s for %d app run(s) in flight before the parameters are restored; "
            "press Ctrl-C again to stop without waiting", grace or 0, len(running),
        )
    deadline = None if grace is None else time.monotonic() + grace
    try:
        pending = set(running)
        while pending:
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning(
                    "stopped waiting after %.0f s: %d app run(s) still in flight may see the "
                    "parameters change (their results are not used)", grace, len(pending),
                )
                return
            _, pending = wait(pending, timeout=TICK, return_when=FIRST_COMPLETED)
    except KeyboardInterrupt:
        if not interrupted:
            raise
        logger.warning("stopped waiting: %d app run(s) may still see the parameters change", len(running))
