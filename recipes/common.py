"""Small helpers the recipes share: an offline embedding and answer scoring."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
_STOPWORDS = frozenset(
    "a an and are as at be by do does for from how i in is it many much my of on or the this "
    "to was what when where which who why with you your".split()
)


def chat_openai(cfg):
    """LangChain's ChatOpenAI for the recipes' app model, with its timeout and reply limit.

    A compatible server (llama.cpp, vLLM, Ollama) gets ``max_tokens``; OpenAI itself gets
    LangChain's ``max_completion_tokens``."""
    from langchain_openai import ChatOpenAI

    limit = {"extra_body": {"max_tokens": cfg.max_tokens}} if cfg.base_url else {"max_tokens": cfg.max_tokens}
    return ChatOpenAI(
        model=cfg.model, base_url=cfg.base_url, api_key=cfg.api_key, temperature=0,
        timeout=cfg.timeout, max_retries=1, **limit,
    )


def load_json(name: str):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9$.\-]+", text.lower()) if w not in _STOPWORDS]


def keyword_vector(text: str, dim: int = 256) -> list[float]:
    """Hashed bag of words: deterministic, offline, good enough to retrieve short documents."""
    vec = [0.0] * dim
    for word in words(text):
        word = word.strip(".")
        word = word[:-1] if len(word) > 3 and word.endswith("s") else word  # crude plural stem
        vec[zlib.crc32(word.encode()) % dim] += 1.0
    return vec if any(vec) else [1.0] + [0.0] * (dim - 1)


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9$.\-]+", text.lower().replace(",", "")))


def answer_feedback(expected: str, output: object):
    """The recipes' guide for short factual answers: a score and a written critique."""
    from opto_adapters import Feedback

    if isinstance(output, BaseException):
        return Feedback(score=0.0, text=f"the app failed: {type(output).__name__}: {output}")
    score, critique = answer_score(expected, str(output))
    return Feedback(score=score, text=critique)


def answer_score(expected: str, answer: str) -> tuple[float, str]:
    """1.0 when the answer contains the reference and is short; less when long or wrong,
    with a critique saying what to change."""
    got = normalize(answer)
    want = normalize(expected)
    if want and want in got:
        n = len(answer.split())
        if n <= 12:
            return 1.0, "correct and concise"
        return 0.7, f"correct but {n} words long; answer in a few words"
    return 0.0, f"wrong: the expected answer is {expected!r}, the app said {answer.strip()[:200]!r}"
