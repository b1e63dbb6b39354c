"""The work mapper shared by suites and fuzz campaigns: run `fn` over work items here, in a pool of
spawned processes, or as Ray tasks, with identical results (each item carries its own seed)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["RunnerError", "available_cores", "iter_work", "map_work"]


class RunnerError(ValueError):
    """The requested way of running work cannot be used here (e.g. Ray is not installed)."""



def _init_worker() -> None:
    """Each worker is one core: no BLAS threads."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and `taskset` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _call_indexed(job: tuple[Callable[[Any], Any], int, Any]) -> tuple[int, Any]:
    fn, pos, item = job
    return pos, fn(item)


def iter_work(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """(position, `fn(item)`) pairs as they finish: computed here (`workers` <= 1 or one item), in a pool
    of `workers` spawned processes, or as Ray tasks (`use_ray`; `ray_address` None: a local instance,
    started and stopped here unless Ray is already running). The suite and the fuzz campaigns share it;
    `fn` must be a module-level function and `items` picklable for the pool and Ray.
    """
    items = list(items)
    if use_ray:
        yield from _ray_map(fn, items, ray_address)
    elif workers <= 1 or len(items) <= 1:
        for pos, it in enumerate(items):
            yield pos, fn(it)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        jobs = [(fn, pos, it) for pos, it in enumerate(items)]
        with ctx.Pool(processes=min(workers, len(items)), initializer=_init_worker) as pool:
            yield from pool.imap_unordered(_call_indexed, jobs, chunksize=1)


def _ray_map(fn: Callable[[Any], Any], items: list[Any], address: str | None) -> Iterator[tuple[int, Any]]:
    try:
        import ray
    except ImportError:
        raise RunnerError(
            "--ray needs the optional 'ray' package (pip install 'rasp-compiler[ray]')"
        ) from None
    started = False
    if not ray.is_initialized():
        ray.init(
            address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False
        ) if address else ray.init(log_to_driver=False, include_dashboard=False)
        started = True
    try:
        task = ray.remote(_call_indexed)
        pending = [task.remote((fn, pos, it)) for pos, it in enumerate(items)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def map_work(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """`[fn(item) for item in items]`, in that order, computed here (`workers` <= 1), in a process pool, or
    as Ray tasks (`use_ray`; `ray_address` None: a local instance). `fn` must be a module-level function
    and `items` picklable for the pool and Ray; `on_result` sees each result as it arrives (progress).

    The campaign's reduce reads the list in item order, so results do not depend on how they were made.
    """
    items = list(items)
    out: list[Any] = [None] * len(items)

    def got(pos: int, result: Any) -> None:
        out[pos] = result
        if on_result is not None:
            on_result(result)

    for pos, result in iter_work(fn, items, workers=workers, use_ray=use_ray, ray_address=ray_address):
        got(pos, result)
    return out
