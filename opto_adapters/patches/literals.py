"""New source text for a string literal: the new value written the way the old one was.

A triple-quoted string (or a docstring) stays triple-quoted with real newlines; an implicit
concatenation keeps its unchanged leading and trailing pieces and splits the changed middle at
its newlines, so a review sees only the lines that changed; a one-line string stays one
string, turned into a parenthesized concatenation when the new text has several lines.
Whatever the style, ``render`` checks that the text it returns evaluates to the new value.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize

from .sites import Site

__all__ = ["RenderError", "raw_for", "render"]

_WIDTH = 88


class RenderError(ValueError):
    """The new value cannot be written at this literal (says why)."""


def raw_for(site: Site, new: str) -> str:
    """The literal value that gives ``new`` once the program applies the site's transform."""
    old = site.raw
    lead = old[: len(old) - len(old.lstrip())]
    trail = old[len(old.rstrip()):]
    t = site.transform
    candidates = [new]
    if t == "signature":
        if not new.startswith(site.prefix):
            raise RenderError(
                f"its first line, the function's signature {site.prefix.strip()!r}, is not the new "
                "text's first line: change the signature in the code by hand"
            )
        candidates = [new[len(site.prefix):] + trail]
    elif t in ("docstring", "strip"):
        candidates.insert(0, lead + new + trail)
    elif t == "cleandoc":
        margin = _margin(old.splitlines()[1:])
        lines = new.split("\n")
        body = [lines[0]] + [(margin + line) if line.strip() else "" for line in lines[1:]]
        candidates.insert(0, lead + "\n".join(body) + trail)
    elif t in ("dedent", "dedent+strip"):
        margin = _margin(old.splitlines())
        head = "\n" if old.startswith("\n") else ""
        tail = trail[trail.rfind("\n"):] if "\n" in trail else ""
        candidates.insert(0, head + textwrap.indent(new, margin) + tail)
    for raw in candidates:
        if site.text_of(raw) == new:
            return raw
    raise RenderError(f"no literal text gives the new value once {t} is applied to it")


def _margin(lines: list[str]) -> str:
    indents = [line[: len(line) - len(line.lstrip())] for line in lines if line.strip()]
    if not indents:
        return ""
    margin = indents[0]
    for ind in indents[1:]:
        while not ind.startswith(margin):
            margin = margin[:-1]
    return margin


def render(site: Site, source: str, new: str) -> str:
    """The source text to put at ``site`` (``source[site.start:site.end]`` now) so that the
    program's text becomes ``new``."""
    if site.transform == "code":
        if site.raw.endswith("\n") and not new.endswith("\n"):
            new += "\n"
        return textwrap.indent(new, site.margin)
    raw = raw_for(site, new)
    old_text = source[site.start : site.end]
    tokens = _string_tokens(old_text)
    line_start = source.rfind("\n", 0, site.start) + 1
    indent = source[line_start : site.start]
    indent = indent[: len(indent) - len(indent.lstrip())]
    column = site.start - line_start
    if site.docstring or (len(tokens) == 1 and _quote(tokens[0][0])[1] in ('"""', "'''")):
        quote = _quote(tokens[0][0])[1] if tokens and len(_quote(tokens[0][0])[1]) == 3 else '"""'
        text = _triple(raw, quote)
    elif len(tokens) > 1 and all(not _quote(t)[0].lower().count("b") for t, _ in tokens):
        text = _concatenation(tokens, old_text, raw, column)
    else:
        quote = _quote(tokens[0][0])[1] if tokens else '"'
        text = _single(raw, quote if len(quote) == 1 else '"', column, indent)
    try:
        ok = ast.literal_eval("(" + text + "\n)") == raw
    except (ValueError, SyntaxError):
        ok = False
    if not ok:  # the plainest spelling, which always evaluates right
        text = repr(raw)
    return text


def _string_tokens(text: str) -> list[tuple[str, int]]:
    """``(token text, line offset)`` of each string token in a literal's source."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING:
                out.append((tok.string, tok.start[0] - 1))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _quote(token: str) -> tuple[str, str]:
    """``(prefix, quote)`` of a string token (``r``, ``'''``)."""
    i = 0
    while i < len(token) and token[i] not in "'\"":
        i += 1
    prefix, rest = token[:i], token[i:]
    quote = rest[:3] if rest[:3] in ('"""', "'''") else rest[:1]
    return prefix, quote


def _escape(text: str, quote: str, *, newlines: bool) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\n" if newlines else "\\n")
        elif ch == "\t":
            out.append("\t" if newlines else "\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == quote[0] and len(quote) == 1:
            out.append("\\" + ch)
        elif not ch.isprintable() and ch not in "\n\t":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _triple(raw: str, quote: str) -> str:
    body = _escape(raw, quote, newlines=True)
    body = body.replace(quote, "\\" + quote[0] + quote[1:])
    if body.endswith(quote[0]):
        body = body[:-1] + "\\" + quote[0]
    return quote + body + quote


def _single(raw: str, quote: str, column: int, indent: str) -> str:
    other = "'" if quote == '"' else '"'
    if quote in raw and other not in raw:
        quote = other
    one = quote + _escape(raw, quote, newlines=False) + quote
    if "\n" not in raw.rstrip("\n") or column + len(one) <= _WIDTH:
        return one
    pieces = _pieces(raw, _WIDTH - len(indent) - 8)
    inner = indent + "    "
    body = ("\n" + inner).join(quote + _escape(p, quote, newlines=False) + quote for p in pieces)
    return "(\n" + inner + body + "\n" + indent + ")"


def _pieces(text: str, width: int) -> list[str]:
    """``text`` cut after each newline, and at spaces to keep pieces under ``width``."""
    width = max(width, 30)
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            if cut <= 0:
                break
            out.append(line[: cut + 1])
            line = line[cut + 1 :]
        out.append(line)
    return out or [""]


def _concatenation(tokens: list[tuple[str, int]], old_text: str, raw: str, column: int) -> str:
    """Keep the unchanged pieces at both ends; re-split the changed middle at newlines."""
    values = [ast.literal_eval(t) for t, _ in tokens]
    head = 0
    pos = 0
    while head < len(values) and raw.startswith(values[head], pos) and values[head]:
        pos += len(values[head])
        head += 1
    tail = len(values)
    end = len(raw)
    while tail > head and values[tail - 1] and raw.endswith(values[tail - 1], 0, end) and end - len(values[tail - 1]) >= pos:
        end -= len(values[tail - 1])
        tail -= 1
    middle = raw[pos:end]
    width = max(len(v) for v in values) if values else _WIDTH
    quote = _quote(tokens[min(head, len(tokens) - 1)][0])[1]
    quote = quote if len(quote) == 1 else '"'
    new_tokens = [t for t, _ in tokens[:head]]
    if middle:
        new_tokens += [quote + _escape(p, quote, newlines=False) + quote for p in _pieces(middle, max(width, 40))]
    new_tokens += [t for t, _ in tokens[tail:]]
    multiline = len({line for _, line in tokens}) > 1
    if not new_tokens:
        return quote * 2
    if not multiline:
        return " ".join(new_tokens)
    second = old_text.split("\n", 1)[1] if "\n" in old_text else ""
    pad = second[: len(second) - len(second.lstrip(" \t"))] or " " * column
    joint = " \\\n" if "\\\n" in old_text else "\n"  # backslash continuations stay so
    return (joint + pad).join(new_tokens)
