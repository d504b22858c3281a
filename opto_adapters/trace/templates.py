"""f-string style templates: their literal pieces and their ``{variables}``."""

from __future__ import annotations

import functools
import re
import string

__all__ = ["template_fields", "template_variables"]

_FORMATTER = string.Formatter()


@functools.lru_cache(maxsize=2048)  # a pure function of the text; checked on every write
def template_fields(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The literal pieces of an f-string style template and the variables between them, in
    order, as ``str.format`` reads it: ``"a {x} b"`` -> ``(("a ", " b"), ("x",))``; ``{{`` is a
    literal brace and ``{a.b}`` / ``{a[0]}`` name ``a``. ``ValueError`` if malformed."""
    literals, names = [""], []
    for literal, field, _, _ in _FORMATTER.parse(template):
        literals[-1] += literal
        if field is not None:
            names.append(re.split(r"[.\[!:]", field, maxsplit=1)[0])
            literals.append("")
    return tuple(literals), tuple(names)


def template_variables(template: str) -> frozenset[str]:
    """The ``{variables}`` of an f-string style template (``{{`` escapes are not variables).

    Raises ``ValueError`` for a malformed template (an unmatched brace).
    """
    return frozenset(template_fields(template)[1])
