"""Helpers shared by the tests: independent oracles and references, model factories, CLI runner."""
