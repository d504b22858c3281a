"""Recipes: one Python file that says what to optimize, run by ``opto-adapters optimize``.

A recipe is an ordinary module. The loader executes it and reads these module-level names:

Required
    ``app`` or ``build_app()``
        The app to optimize: a LangChain runnable, a LlamaIndex query engine or agent, a
        tracer, or a traced Python callable. Prefer ``build_app()`` when building it is costly
        or needs the environment; it is called once, when the app is needed.
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
        A dict of ``Trainer`` options (``epochs``, ``batch_size``, ``n_candidates``...);
        command-line flags override them.

The optimizer's LLM is configured by the environment: ``OPTO_MODEL`` (or ``--model``),
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.

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

__all__ = ["Recipe", "load_recipe"]

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

    def build_app(self) -> Any:
        """The app (``build_app()`` is called once)."""
        if self._app is None:
            if "build_app" in self.namespace:
                self._app = self._call("build_app")
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

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return self.namespace[name](*args)
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
            from .trainer import Trainer

            known = set(inspect.signature(Trainer).parameters) - {"app", "train", "val", "guide"}
            unknown = sorted(set(settings) - known)
            if unknown:
                problems.append(f"`SETTINGS` has unknown option(s) {unknown}; known: {sorted(known)}")
    if problems:
        raise RecipeError(f"recipe {path}: " + "; ".join(problems))


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
