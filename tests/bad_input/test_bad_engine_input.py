"""Bad input, engine: BOS at position 0 and nowhere else; ids range-checked; threads capped."""

import os

import numpy as np
import pytest
from support.engine_reference import random_model, random_tokens

from rasp_compiler.engine import Engine, EngineError


def test_rows_must_start_with_bos() -> None:
    model = random_model(0)
    ids = random_tokens(model, 3, 0)
    ids[1, 0] = 1
    with pytest.raises(EngineError, match="row 1 starts with id 1; every row must start with the BOS"):
        Engine(model).run(ids)


def test_bos_only_at_position_zero() -> None:
    model = random_model(0)
    ids = random_tokens(model, 2, 0)
    ids[1, 2] = model.config.bos_token_id
    with pytest.raises(EngineError, match="appears at row 1, position 2"):
        Engine(model).run(ids)


def test_as_many_bos_as_rows_but_misplaced_is_refused() -> None:
    """The one-pass check counts BOS tokens: a second BOS in one row and none at the start of another
    keeps the count right, and must still be refused, by every entry point."""
    model = random_model(0)
    ids = random_tokens(model, 2, 0)
    bos = model.config.bos_token_id
    ids[0, 2], ids[1, 0] = bos, 1
    engine = Engine(model)
    for run in (engine.run, lambda x: engine.run_with_cache(x, names=[])):
        with pytest.raises(EngineError, match="row 1 starts with id 1"):
            run(ids)
        with pytest.raises(EngineError, match="row 1 starts with id 1"):
            run(ids.astype(np.int32))


def test_ids_that_would_wrap_when_narrowed_are_refused() -> None:
    model = random_model(0)
    ids = random_tokens(model, 1, 0).astype(np.int64)
    ids[0, 1] = 2**32 + 1  # int32 would read this as 1, a valid id
    with pytest.raises(EngineError, match="outside"):
        Engine(model).run(ids)


def test_threads_are_capped_at_the_cores() -> None:
    engine = Engine(random_model(0), threads=10_000)
    assert engine.threads == (os.cpu_count() or 1)
