"""Compile-time benchmark: ours vs tracr, measured in the same run.

Per library program (its registry config) and for sort / hist at vocab {5,10,20,50} x max_seq_len
{5,10,20,50}: compile seconds, layers, d_model, parameters, and for tracr (when tracr-pypi is
installed) the same plus the time ratio. tracr runs in a worker process with a per-compile timeout
(its large configurations take minutes); a timeout is reported as such.

    python benchmarks/compile.py                # everything
    python benchmarks/compile.py --quick        # library + the 5/10 grid corner
    python benchmarks/compile.py --no-tracr --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.rasp import lib

GRID = (5, 10, 20, 50)


def _cases(quick: bool) -> list[tuple[str, Any, Any, int]]:
    """(name, builder, vocab, max_seq_len) for every row of the table."""
    out = [(name, e.builder, e.vocab, e.max_seq_len) for name, e in sorted(lib.LIBRARY.items())]
    grid = (5, 10) if quick else GRID
    for v in grid:
        for n in grid:
            vocab = frozenset(range(1, v + 1))
            out.append(
                (
                    f"sort[v={v},n={n}]",
                    lambda n=n: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=n, min_key=1),
                    vocab,
                    n,
                )
            )
            out.append((f"hist[v={v},n={n}]", lib.make_hist, vocab, n))
    return out


def _tracr_worker(conn: Any) -> None:
    """Child process: compile programs with tracr on request, answer (seconds, layers, d_model, params)."""
    from tracr.compiler import compiling as tc

    from tests.support.compiler import to_tracr

    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, vocab, n = msg
        try:
            builder = dict((c[0], c[1]) for c in _cases(False))[name]
            program = to_tracr(builder())
            t = time.perf_counter()
            m = tc.compile_rasp_to_model(program, set(vocab), n, compiler_bos="BOS")
            dt = time.perf_counter() - t
            params = int(sum(x.size for mod in m.params.values() for x in mod.values()))
            conn.send((dt, m.model_config.num_layers, len(m.residual_labels), params, None))
        except Exception as err:  # noqa: BLE001 - reported in the table
            conn.send((None, None, None, None, f"{type(err).__name__}: {str(err)[:60]}"))


class _Tracr:
    """A tracr worker process that is restarted after a timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_tracr_worker, args=(child,), daemon=True)
        self.proc.start()

    def compile(self, name: str, vocab: Any, n: int) -> tuple[Any, ...]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((name, sorted(vocab), n))
        if self.conn.poll(self.timeout):
            return self.conn.recv()
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return (None, None, None, None, f"timeout > {self.timeout:.0f}s")

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="library + the smallest grid corner")
    ap.add_argument("--no-tracr", action="store_true", help="skip tracr even when installed")
    ap.add_argument("--tracr-timeout", type=float, default=120.0, help="seconds per tracr compile")
    ap.add_argument("--repeat", type=int, default=3, help="our compile is timed as the best of this many")
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    tracr = None
    if not args.no_tracr:
        if importlib.util.find_spec("tracr") is None:
            print("tracr not installed: ours only")
        else:
            tracr = _Tracr(args.tracr_timeout)
    rows = []
    cols = f"{'L':>3s} {'d_model':>7s} {'params':>11s}"
    head = f"{'program':22s} {'ours s':>8s} {cols} | {'tracr s':>8s} {cols} {'speedup':>8s}"
    print(head)
    print("-" * len(head))
    for name, builder, vocab, n in _cases(args.quick):
        program = builder()
        ours = float("inf")
        for _ in range(args.repeat):  # best of a few: small compiles are milliseconds, the machine is shared
            t = time.perf_counter()
            m = compiling.compile_rasp_to_model(program, vocab, n)
            ours = min(ours, time.perf_counter() - t)
        row: dict[str, Any] = {
            "program": name,
            "vocab": len(vocab),
            "max_seq_len": n,
            "seconds": ours,
            "layers": m.n_layers,
            "d_model": m.d_model,
            "params": m.n_params,
        }
        line = f"{name:22s} {ours:8.3f} {m.n_layers:3d} {m.d_model:7d} {m.n_params:11d} |"
        if tracr is not None:
            ts, tl, td, tp, err = tracr.compile(name, vocab, n)
            row.update(tracr_seconds=ts, tracr_layers=tl, tracr_d_model=td, tracr_params=tp, tracr_error=err)
            if err:
                line += f" tracr: {err}"
            else:
                row["speedup"] = ts / ours
                line += f" {ts:8.3f} {tl:3d} {td:7d} {tp:11d} {ts / ours:7.0f}x"
        print(line, flush=True)
        rows.append(row)
    if tracr is not None:
        tracr.close()
        ratios = [r["speedup"] for r in rows if r.get("speedup")]
        if ratios:
            median = sorted(ratios)[len(ratios) // 2]
            print(f"\nspeedup over tracr: min {min(ratios):.0f}x, median {median:.0f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
