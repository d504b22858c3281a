"""Plain Trace API, no framework: the optimizer rewrites the code of a Python function.

`parse_price` turns price texts from shop listings into numbers. Its first version is naive
(`float(text)`), so most examples raise or come out wrong; the feedback says which, and
OptoPrime proposes new source code (a `code` parameter) that the next call runs.

    python recipes/trace_python.py --dry-run          # show the trace and the optimizer prompt
    python recipes/trace_python.py --epochs 2         # optimize (needs a model endpoint)
    opto-adapters optimize recipes/trace_python.py    # the same through the CLI
"""

from __future__ import annotations

from opto_adapters import Feedback, bundle


@bundle(trainable=True)
def parse_price(text):
    """Return the price in `text` as a float (0.0 when the item is free)."""
    return float(text)


def build_app(dry_run: bool = False):
    # No model inside the app: the dry run and the real run are the same program.
    return parse_price


PARAMETERS = [parse_price.parameter]
OBJECTIVE = "Make parse_price return the right number for every price text a shop may show."

train = [
    {"input": "$1,299.00", "price": 1299.0},
    {"input": "12.50", "price": 12.5},
    {"input": "EUR 7,95", "price": 7.95},
    {"input": "free", "price": 0.0},
    {"input": "  42 ", "price": 42.0},
    {"input": "3 for $10 (each $3.50)", "price": 3.5},
]
val = [
    {"input": "$0.99", "price": 0.99},
    {"input": "1.000,50 EUR", "price": 1000.5},
    {"input": "Free shipping item: FREE", "price": 0.0},
    {"input": "USD 15", "price": 15.0},
]

SETTINGS = {"batch_size": 3, "tolerate_app_errors": True}


def guide(example, output):
    expected = example["price"]
    if isinstance(output, BaseException):
        return Feedback(
            score=0.0,
            text=f"parse_price({example['input']!r}) raised {type(output).__name__}: {output}; "
            f"expected {expected}",
        )
    if isinstance(output, (int, float)) and abs(output - expected) < 1e-9:
        return Feedback(score=1.0, text="correct")
    return Feedback(
        score=0.0, text=f"parse_price({example['input']!r}) returned {output!r}; expected {expected}"
    )


if __name__ == "__main__":
    from opto_adapters.cli import run_recipe

    raise SystemExit(run_recipe(__file__))
