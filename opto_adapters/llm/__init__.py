"""The LLM client the optimizers use: any OpenAI-compatible endpoint, with retries, a shared
budget and lenient JSON replies.

One idea a module: :mod:`.errors` (what can go wrong), :mod:`.budget` (usage and limits),
:mod:`.json_repair` (JSON out of a reply), :mod:`.endpoint` (configuration and the ``openai``
client, imported only when one is made) and :mod:`.client` (``LLM`` itself).
"""

from .budget import Budget, Usage
from .client import LLM, JSONMode, JSONResult
from .endpoint import DEFAULT_MODEL
from .errors import (
    AuthenticationError,
    BudgetExceeded,
    LLMError,
    LLMRequestError,
    LLMResponseError,
)
from .json_repair import extract_json

__all__ = [
    "DEFAULT_MODEL",
    "LLM",
    "AuthenticationError",
    "Budget",
    "BudgetExceeded",
    "JSONMode",
    "JSONResult",
    "LLMError",
    "LLMRequestError",
    "LLMResponseError",
    "Usage",
    "extract_json",
]
