"""The engine layer's error type."""


class EngineError(ValueError):
    """An input the engine cannot take: wrong dtype/shape, token out of range, unknown component or hook."""
