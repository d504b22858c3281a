"""Apps the Ray tests send to workers (not collected). Workers import this module by name, so
it imports little: no LlamaIndex, and LangChain only inside ``build_chain``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from opto_adapters.trace import bundle, node

from .facts import FACTS, MARK, answer_for, guide  # noqa: F401  (guide: the workers' guide)

PROMPT = node("Reply {q}", name="prompt", trainable=True, kind="prompt", description="The reply template.")


@bundle()
def respond(template, q):
    """Fill the question into the template."""
    return template.format(q=q)


def python_app(x):
    """A traced Python app; an input naming a file that does not exist kills its worker once."""
    die = x.get("die")
    if die and not os.path.exists(die):
        Path(die).touch()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-run
    return respond(PROMPT, x["q"])




def build_chain():
    """The chain, built in each worker (its fake model holds a lock: it cannot be pickled)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from .langchain_fakes import RecordingChatModel

    model = RecordingChatModel(respond=lambda messages: answer_for("\n".join(str(m.content) for m in messages)))
    prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), ("human", "{question}")])
    return prompt | model | StrOutputParser()
