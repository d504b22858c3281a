"""Shared pytest fixtures."""

from opto_adapters.testing import scripted_llm  # noqa: F401  (registers the fixture)
