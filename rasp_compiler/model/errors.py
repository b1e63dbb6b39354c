"""The model layer's error type."""


class ModelError(ValueError):
    """A model, its config, weights or codec is inconsistent, or an input does not fit the model."""
