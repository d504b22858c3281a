"""Recipes: one Python file that says what to optimize, run by ``opto-adapters optimize``.

A recipe is an ordinary module. The loader executes it and reads these module-level names:

Required
    ``app`` or ``build_app()``
        The app to optimize: a LangChain runnable, a LlamaIndex query engine or agent, a
        tracer, or a traced Python callable. Prefer ``build_app()`` when building it is costly
        or needs the environment; it is called once, when the app is needed. If it takes a
        ``dry_run`` argument, ``--dry-run`` calls ``build_app(dry_run=True)``: return the same
        app wired to the framework's fake model, so nothing calls a real model.
    ``train``
        The training examples: a list, or a function returning one.
    ``guide(example, output)``
        Returns a score (higher is better), a ``bool``, or ``Feedback(score=..., text=...)``.

Optional
    ``val``
        Validation examples (a list or a function returning one); candidates are kept only if
        they do not score worse on them. Without ``val`` the minibatch is the gate.
    ``OBJECTIVE``
        The optimizer's instruction (what "better" means), a string.
    ``INPUT_KEY``
        How an example becomes the app's input: a field name, a list of field names or a
        function (default: ``example["input"]`` if present, else the whole example).
    ``PARAMETERS``
        The trainable ``Parameter`` objects of a plain Python app that cannot be discovered.
    ``build_optimizer(parameters, llm)``
        Returns the optimizer to use (default: ``OptoPrime(parameters, llm,
        objective=OBJECTIVE)``).
    ``SETTINGS``
        A dict of ``Trainer`` options (``epochs``, ``batch_size``, ``n_candidates``,
        ``search="pareto"``, ``proposals_per_step``, ``merge``, ``max_metric_calls``,
        ``executor``...); command-line flags (``--search``, ``--executor``...) override them.
        With ``--executor ray``, a worker that is not sent the app (it cannot be pickled)
        executes this file and calls ``build_app()`` itself, so keep building it free of side
        effects; ``ray_address`` and ``ray_workers`` here choose the cluster and its size.

The optimizer's LLM is configured by the environment: ``OPTO_MODEL`` (or ``--model``),
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``. An app that calls a model of its own reads
``app_model()`` (``OPTO_APP_MODEL``, defaulting to the optimizer's model, on the same
endpoint), so the application model and the optimizer model can differ.

A recipe runs on its own with ``python recipe.py [--dry-run] [flags]`` when it ends with::

    if __name__ == "__main__":
        from opto_adapters.cli import run_recipe
        raise SystemExit(run_recipe(__file__))

Example::

    from opto_adapters import Feedback, bundle, node

    prompt = node("Answer: {q}", name="prompt", trainable=True, kind="prompt")

    @bundle()
    def reply(template, q):
        "Fill the question into the template."
        return template.format(q=q)

    def app(q):
        return reply(prompt, q)

    train = [{"input": "2+2", "answer": "4"}]
    def guide(example, output):
        return Feedback(score=float(example["answer"] in output), text="give the answer")

``load_recipe(path)`` only executes the file and checks the names; building the app and
loading the data happen on demand, so the same loader serves dry runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError

__all__ = ["AppModel", "Recipe", "app_model", "endpoint_configured", "load_recipe"]

CONVENTION = (
    "a recipe defines `app` (or `build_app()`), `train` and `guide(example, output)`, and "
    "optionally `val`, `OBJECTIVE`, `INPUT_KEY`, `PARAMETERS`, `build_optimizer(parameters, "
    "llm)` and `SETTINGS` (see opto_adapters.train.recipe)"
)


@dataclass
class Recipe:
    """A loaded recipe file: what it defines, built on demand."""

    path: Path
    namespace: dict[str, Any]
    _app: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.stem

    def build_app(self, *, dry_run: bool = False) -> Any:
        """The app (``build_app()`` is called once); ``dry_run`` asks for the fake-model app."""
        if self._app is None:
            if "build_app" in self.namespace:
                builder = self.namespace["build_app"]
                takes_dry_run = "dry_run" in _parameter_names(builder)
                if dry_run and not takes_dry_run:
                    raise RecipeError(
                        f"{self.path}: --dry-run needs build_app(dry_run=False) that returns the "
                        "app with the framework's fake model when dry_run is True"
                    )
                args = {"dry_run": dry_run} if takes_dry_run else {}
                self._app = self._call("build_app", **args)
                if self._app is None:
                    raise RecipeError(f"{self.path}: build_app() returned None; return the app")
            else:
                self._app = self.namespace["app"]
        return self._app

    def load_train(self) -> list[Any]:
        """The training examples."""
        return self._data("train")

    def load_val(self) -> list[Any] | None:
        """The validation examples, or ``None``."""
        return self._data("val") if self.namespace.get("val") is not None else None

    @property
    def guide(self) -> Callable[[Any, Any], Any]:
        return self.namespace["guide"]

    @property
    def objective(self) -> str | None:
        return self.namespace.get("OBJECTIVE")

    @property
    def input_key(self) -> Any:
        return self.namespace.get("INPUT_KEY")

    @property
    def parameters(self) -> list[Any] | None:
        params = self.namespace.get("PARAMETERS")
        return list(params) if params is not None else None

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.namespace.get("SETTINGS") or {})

    def build_optimizer(self, parameters: list[Any], llm: Any) -> Any | None:
        """The recipe's optimizer, or ``None`` to use the default."""
        if "build_optimizer" not in self.namespace:
            return None
        return self._call("build_optimizer", parameters, llm)

    def _data(self, name: str) -> list[Any]:
        value = self.namespace[name]
        if callable(value):
            value = self._call(name)
        if value is None or isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise RecipeError(
                f"{self.path}: `{name}` must be a list of examples (or a function returning one), "
                f"got {type(value).__name__}"
            )
        return list(value)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.namespace[name](*args, **kwargs)
        except RecipeError:
            raise
        except Exception as exc:
            raise RecipeError(
                f"{self.path}: {name}() raised {type(exc).__name__}: {exc}\n{_user_traceback(exc)}"
            ) from exc


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Execute a recipe file and check that it follows the convention (see module docstring)."""
    target = Path(path)
    if not target.is_file():
        what = "is a directory" if target.is_dir() else "does not exist"
        raise RecipeError(f"recipe {target} {what}: give the path of a .py file; {CONVENTION}")
    if target.suffix != ".py":
        raise RecipeError(f"recipe {target} is not a .py file; {CONVENTION}")
    digest = hashlib.sha1(str(target.resolve()).encode()).hexdigest()[:8]
    module_name = f"opto_recipe_{target.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, target)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot load {target} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(target.resolve().parent)
    sys.modules[module_name] = module  # dataclasses, pickle and inspect look modules up here
    sys.path.insert(0, folder)  # so a recipe can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise RecipeError(
            f"recipe {target} raised {type(exc).__name__} while loading: {exc}\n{_user_traceback(exc)}"
        ) from exc
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    namespace = vars(module)
    _check(target, namespace)
    return Recipe(target, namespace)


def _check(path: Path, ns: dict[str, Any]) -> None:
    missing = []
    if "app" not in ns and "build_app" not in ns:
        missing.append("`app` or `build_app()`")
    for name in ("train", "guide"):
        if name not in ns:
            missing.append(f"`{name}`")
    if missing:
        raise RecipeError(f"recipe {path} lacks {', '.join(missing)}; {CONVENTION}")
    problems = []
    if not callable(ns["guide"]):
        problems.append(f"`guide` must be a function guide(example, output), got {type(ns['guide']).__name__}")
    elif _too_few_arguments(ns["guide"], 2):
        problems.append("`guide` must take two arguments: guide(example, output)")
    if "build_app" in ns and not callable(ns["build_app"]):
        problems.append("`build_app` must be a function returning the app")
    if "build_optimizer" in ns and not callable(ns["build_optimizer"]):
        problems.append("`build_optimizer` must be a function build_optimizer(parameters, llm)")
    if ns.get("OBJECTIVE") is not None and not isinstance(ns["OBJECTIVE"], str):
        problems.append(f"`OBJECTIVE` must be a string, got {type(ns['OBJECTIVE']).__name__}")
    settings = ns.get("SETTINGS")
    if settings is not None:
        if not isinstance(settings, dict):
            problems.append(f"`SETTINGS` must be a dict of Trainer options, got {type(settings).__name__}")
        else:
            from .config import TrainConfig
            from .trainer import Trainer

            keywords = set(inspect.signature(Trainer).parameters) - {"app", "train", "val", "guide", "settings"}
            known = keywords | TrainConfig.names()
            unknown = sorted(set(settings) - known)
            if unknown:
                problems.append(f"`SETTINGS` has unknown option(s) {unknown}; known: {sorted(known)}")
    if problems:
        raise RecipeError(f"recipe {path}: " + "; ".join(problems))


def _parameter_names(fn: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


@dataclass(frozen=True)
class AppModel:
    """Where an app's own model is: ``model``, ``base_url`` (None: OpenAI), ``api_key``; and
    how long it may take: ``timeout`` (seconds per request), ``max_tokens`` (per reply), and
    ``context_window`` (tokens), so a weak model that never stops cannot hold a run."""

    model: str
    base_url: str | None
    api_key: str | None
    timeout: float = 60.0
    max_tokens: int = 512
    context_window: int = 16_000


def app_model(default: str = "gpt-4o-mini") -> AppModel:
    """The application model from the environment: ``OPTO_APP_MODEL`` (else ``OPTO_MODEL``,
    else ``default``) at ``OPENAI_BASE_URL`` with ``OPENAI_API_KEY``; ``OPTO_APP_TIMEOUT``,
    ``OPTO_APP_MAX_TOKENS`` and ``OPTO_APP_CONTEXT`` override the limits."""
    model = os.environ.get("OPTO_APP_MODEL") or os.environ.get("OPTO_MODEL") or default
    base_url = os.environ.get("OPENAI_BASE_URL") or None
    api_key = os.environ.get("OPENAI_API_KEY") or ("not-needed" if base_url else None)
    return AppModel(
        model, base_url, api_key,
        timeout=_env_number("OPTO_APP_TIMEOUT", 60.0, float),
        max_tokens=_env_number("OPTO_APP_MAX_TOKENS", 512, int),
        context_window=_env_number("OPTO_APP_CONTEXT", 16_000, int),
    )


def _env_number(name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise RecipeError(f"{name}={raw!r} must be a positive {kind.__name__}")
    return value


def endpoint_configured() -> bool:
    """Whether the environment names a model endpoint (an API key or a base URL)."""
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))


def _too_few_arguments(fn: Callable[..., Any], n: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return True
    except ValueError:  # no signature (a builtin): cannot tell
        return False
    return False


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the loader's own frames."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen")
        and "opto_adapters/train/recipe" not in f.filename.replace(os.sep, "/")
    ]
    return "".join(traceback.format_list(frames)).rstrip()


@dataclass
class DryRun:
    """What ``--dry-run`` shows: the traced first example and the optimizer's exact prompt."""

    example: Any
    run: Any
    feedback: Any
    messages: list[dict[str, str]]


def dry_run(recipe: Recipe, *, index: int = 0) -> DryRun:
    """Run the recipe's app (fake model) on one training example, trace it, give the guide's
    feedback and build the optimizer's prompt, without calling any model."""
    from ..optimizers import OptoPrime
    from .apps import as_tracer
    from .data import app_inputs, call_guide, examples_list

    app = as_tracer(recipe.build_app(dry_run=True), parameters=recipe.parameters)
    train = examples_list(recipe.load_train(), "train", required=True)
    example = train[index]
    (app_input,) = app_inputs([example], "train", recipe.input_key)
    discover = getattr(app, "discover", None)
    run = discover(app_input) if callable(discover) and not app.parameters else app.run(app_input)
    if run.graph is None:
        raise RecipeError(f"{recipe.path}: the app's run was not traced; nothing to show")
    feedback = call_guide(
        recipe.guide, example, run.output, run.error, split="train", index=index, error_score=0.0
    )
    if not app.parameters:
        raise RecipeError(f"{recipe.path}: the app has no trainable parameters to optimize")
    optimizer = recipe.build_optimizer(app.parameters, None) or OptoPrime(
        app.parameters, llm=None, objective=recipe.objective
    )
    optimizer.zero_feedback()
    optimizer.backward(run.graph, feedback)
    messages = optimizer.messages()
    optimizer.zero_feedback()
    return DryRun(example=example, run=run, feedback=feedback, messages=messages)
