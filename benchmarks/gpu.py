"""GPU benchmark: the CUDA engine vs the PyTorch module on CUDA (eager and torch.compile) and
TransformerLens (when installed), batch 1 to 65,536; then a full edge sweep of a 6-layer model vs
a hook loop on the PyTorch CUDA module; sort and hist scaled up to vocab = length = 50, with the
weights uploaded in their automatic form (CSR where mostly zero) and as dense rows.

    python benchmarks/gpu.py [--batches 1,16,256,4096,65536] [--programs sort,reverse,...]
                             [--no-compile] [--sweep-program majority,second_largest] [--sweep-batch 32]
                             [--scale-sizes 10,20,50]

Times are medians of CUDA-event-timed calls on device-resident inputs and outputs (no host copies
on either side). Ratios are (peer time) / (engine time): > 1 means the engine is faster. The table
is printed and, when $OUT is set, also written to $OUT/gpu_bench.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import library_model, random_ids  # noqa: E402

from rasp_compiler.engine import EdgePatch, Engine, build_info  # noqa: E402

LINES: list[str] = []


def say(line: str = "") -> None:
    """Print a line and append it to $OUT/gpu_bench.md as it comes (a run cut short keeps its tables)."""
    print(line, flush=True)
    LINES.append(line)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_bench.md"), "a") as fh:
            fh.write(line + "\n")


def cuda_time(fn: Callable[[], Any], min_time: float = 0.25, max_reps: int = 200) -> float:
    """Median seconds per call, each call timed with CUDA events (after two warm-up calls)."""
    fn()
    fn()
    torch.cuda.synchronize()
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < max_reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def fmt(t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t * 1e6:.1f} us" if t < 1e-3 else (f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s")


def ratio(peer: float | None, eng: float) -> str:
    return "-" if peer is None else f"{peer / eng:.1f}x"


def eager_forward(module: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The PyTorch module's forward without its host-side token checks (no device->host syncs)."""
    T = tokens.shape[1]
    x = module.W_E[tokens] + module.W_pos[:T].unsqueeze(0)
    pad = module.cfg.pad_token_id
    key_is_pad = (tokens == pad) if pad is not None else None
    for block in module.blocks:
        x = block(x, key_is_pad)
    return x @ module.W_U + module.b_U


def forward_table(args: argparse.Namespace) -> None:
    batches = [int(b) for b in args.batches.split(",")]
    try:
        import transformer_lens  # noqa: F401

        have_tl = True
    except ImportError:
        have_tl = False
    say("## Forward pass (device tensors in and out)")
    say("")
    if not have_tl:
        say("TransformerLens is not installed here: its column is '-'.")
        say("")
    say("| program | L/D/H/T | batch | engine-cuda | torch eager | torch.compile | TL | eager/engine | "
        "compile/engine |")
    say("|---|---|---|---|---|---|---|---|---|")
    for name in args.programs.split(","):
        model = library_model(name)
        c = model.config
        eng = Engine(model, device="cuda")
        module = model.to_torch().cuda().eval()
        compiled = None
        if not args.no_compile and name in args.compile_programs.split(","):
            compiled = torch.compile(lambda t, m=module: eager_forward(m, t), dynamic=False)
        tl_model = None
        if have_tl:
            try:
                from rasp_compiler.model.export import to_transformer_lens  # type: ignore[attr-defined]

                tl_model = to_transformer_lens(model).cuda()
            except Exception as exc:  # noqa: BLE001 - TL is optional; report and go on
                say(f"(TransformerLens export failed: {exc})")
        for batch in batches:
            ids = torch.from_numpy(random_ids(model, min(batch, 4096), seed=batch))
            if batch > ids.shape[0]:
                ids = ids.repeat((batch + ids.shape[0] - 1) // ids.shape[0], 1)[:batch]
            ids = ids.cuda()
            ids32 = ids.to(torch.int32)
            with torch.no_grad():
                want = eager_forward(module, ids)
                got = eng.run(ids32)
                err = float((got - want).abs().max())
                if err > 1e-3:
                    say(f"WARNING {name} batch {batch}: engine vs torch max abs error {err}")
                t_eng = cuda_time(lambda: eng.run(ids32))
                t_eager = cuda_time(lambda: eager_forward(module, ids))
                t_comp = None
                if compiled is not None and batch in (batches[0], batches[-1]):
                    try:
                        t0 = time.perf_counter()
                        compiled(ids)
                        torch.cuda.synchronize()
                        say(f"(torch.compile of {name} for batch {batch}: {time.perf_counter() - t0:.1f} s)")
                        t_comp = cuda_time(lambda: compiled(ids))
                    except Exception as exc:  # noqa: BLE001 - compile failures are reported, not fatal
                        say(f"(torch.compile failed for {name}: {type(exc).__name__}: {exc})")
                        compiled = None
                t_tl = cuda_time(lambda: tl_model(ids)) if tl_model is not None else None
            say(f"| {name} | {c.n_layers}/{c.d_model}/{c.n_heads}/{c.n_ctx} | {batch} | {fmt(t_eng)} | "
                f"{fmt(t_eager)} | {fmt(t_comp)} | {fmt(t_tl)} | {ratio(t_eager, t_eng)} | "
                f"{ratio(t_comp, t_eng)} |")


def engine_with(model: Any, kernel: str, min_blocks: str = "2", xskip: str = "1",
                sparse: str = "auto") -> Engine:
    """A CUDA engine whose kernel choice and weight form are forced (RASP_CUDA_KERNEL / RASP_CUDA_MINBLOCKS /
    RASP_CUDA_XSKIP / RASP_CUDA_SPARSE are read when an engine is made)."""
    names = ("RASP_CUDA_KERNEL", "RASP_CUDA_MINBLOCKS", "RASP_CUDA_XSKIP", "RASP_CUDA_SPARSE")
    saved = {k: os.environ.get(k) for k in names}
    for k, v in zip(names, (kernel, min_blocks, xskip, sparse), strict=True):
        os.environ[k] = v
    try:
        return Engine(model, device="cuda")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_table(args: argparse.Namespace) -> None:
    """Engine time per kernel variant at the large batches: block mode ("old": a block per sequence, uncapped
    registers) vs warp mode ("new": a warp per sequence, registers capped by min blocks per SM), and threads
    per block (= warps x 32 in warp mode), and warp mode's skipping of all-zero input rows: xs0 none (run 2's
    kernel), xs1 in matmuls reading the residual stream, xs2 in every matmul. "auto" is the engine as made by
    default (the forward table above)."""
    batches = [b for b in (int(x) for x in args.batches.split(",")) if b >= 4096]
    if not batches:
        return
    # (mode, min blocks, threads, xskip); threads 0 = the engine's own choice. "new mb2 t128 xs0" is run 2's
    # automatic choice at these batches.
    variants = [("old", "2", 128, "0"), ("new", "2", 128, "0"), ("new", "2", 256, "0"),
                ("new", "2", 128, "1"), ("new", "2", 256, "1"), ("new", "4", 256, "1"),
                ("new", "2", 128, "2"), ("new", "2", 256, "2"), ("auto", "2", 0, "")]

    def label(k: str, mb: str, t: int, xs: str) -> str:
        return {"old": f"old t{t}", "auto": "auto"}.get(k, f"new mb{mb} t{t} xs{xs}")

    say("")
    say("## Kernel variants (mode / register cap as min blocks per SM / threads per block / row skipping)")
    say("")
    try:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        say(f"The automatic choice (forward table) takes warp mode from {16 * sms} items on ({sms} SMs).")
        say("")
    except Exception:  # noqa: BLE001 - informational only
        pass
    say("| program | batch | " + " | ".join(label(*v) for v in variants) + " |")
    say("|---|---|" + "---|" * len(variants))
    for name in args.programs.split(","):
        model = library_model(name)
        engines = {}
        for k, mb, _, xs in variants:
            if (k, mb, xs) not in engines:
                engines[(k, mb, xs)] = engine_with(model, k, mb, xs)
        for batch in batches:
            ids = torch.from_numpy(random_ids(model, min(batch, 4096), seed=3))
            ids = ids.repeat((batch + ids.shape[0] - 1) // ids.shape[0], 1)[:batch].to(torch.int32).cuda()
            want = engines[("old", "2", "0")].run(ids)
            cells = []
            for k, mb, t, xs in variants:
                eng = engines[(k, mb, xs)]
                if t:
                    eng._core.set_block_threads(t)
                err = float((eng.run(ids) - want).abs().max())
                if err > 1e-4:
                    say(f"WARNING {name} batch {batch} {label(k, mb, t, xs)}: differs from old by {err}")
                cells.append(fmt(cuda_time(lambda e=eng: e.run(ids), min_time=0.1)))
            say(f"| {name} | {batch} | " + " | ".join(cells) + " |")


def scale_table(args: argparse.Namespace) -> None:
    """sort and hist scaled up (vocab = length = n, benchmarks/scale.py's programs): the engine with each
    matrix in its automatic form (CSR where it is mostly zero within its non-zero rows) and with every
    matrix as dense rows, against eager PyTorch on the GPU; device memory of the engine's weights."""
    from scale import scaled_programs

    from rasp_compiler.compiler import compiling

    say("")
    say("## Scaled-up programs: weight forms (auto = CSR where sparse, dense = every matrix as dense rows)")
    say("")
    say("| program | n | d_model | non-zero MAC/seq | batch | auto | dense rows | torch eager | dense/auto "
        "| eager/auto | weights auto / dense MB |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.scale_sizes.split(",")):
        for name, program in scaled_programs(n):
            scale_rows(name, n, compiling.compile_rasp_to_model(program, set(range(1, n + 1)), n))
            torch.cuda.empty_cache()


def scale_rows(name: str, n: int, model: Any) -> None:
    from scale import _work

    _, _, macs = _work(model, n)
    auto, dense = engine_with(model, "auto"), engine_with(model, "auto", sparse="0")
    module = model.to_torch().cuda().eval()
    mb = [e.stats()["weight_bytes"] / 2**20 for e in (auto, dense)]
    # eager torch holds several [batch, T, d_model] activations: smaller batches for the large models
    for batch in (1, 64, 512) if model.config.d_model > 1000 else (1, 256, 4096):
        ids = torch.from_numpy(random_ids(model, batch, seed=n)).cuda()
        ids32 = ids.to(torch.int32)
        with torch.no_grad():
            want = eager_forward(module, ids)
            for e, what in ((auto, "auto"), (dense, "dense")):
                err = float((e.run(ids32) - want).abs().max())
                if err > 1e-3:
                    say(f"WARNING {name} n={n} batch {batch} {what}: max abs error vs torch {err}")
            t_a = cuda_time(lambda: auto.run(ids32), min_time=0.1) / batch
            t_d = cuda_time(lambda: dense.run(ids32), min_time=0.1) / batch
            t_t = cuda_time(lambda: eager_forward(module, ids), min_time=0.1) / batch
        say(f"| {name} | {n} | {model.config.d_model:,} | {macs:,} | {batch} | {fmt(t_a)} | {fmt(t_d)} "
            f"| {fmt(t_t)} | {ratio(t_d, t_a)} | {ratio(t_t, t_a)} | {mb[0]:.2f} / {mb[1]:.2f} |")


def hook_loop_edge(module: Any, tokens: torch.Tensor, src_cache: dict[str, torch.Tensor], edge: tuple) -> Any:
    """One edge patch done the usual way: a forward with hooks (writer's current output captured,
    reader's input corrected by source - current)."""
    w, r, inp = edge
    n_layers = module.cfg.n_layers
    if w in ("embed", "pos_embed"):
        w_hook, w_head = f"hook_{w}", None
    else:
        layer, rest = w[1:].split(".", 1)
        w_hook, w_head = ((f"blocks.{layer}.hook_mlp_out", None) if rest == "MLP"
                          else (f"blocks.{layer}.attn.hook_result", int(rest[1:])))
    cur: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        cur["v"] = act if w_head is None else act[:, :, w_head]

    src = src_cache[w_hook] if w_head is None else src_cache[w_hook][:, :, w_head]
    if r == "output":
        def fix(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return act + (src - cur["v"])
        r_hook = f"blocks.{n_layers - 1}.hook_resid_post"
    else:
        layer, rest = r[1:].split(".", 1)
        block = module.blocks[int(layer)]
        if rest == "MLP":
            def fix(act: torch.Tensor, hook: Any) -> torch.Tensor:
                return act + (src - cur["v"]) @ block.mlp.W_in
            r_hook = f"blocks.{layer}.mlp.hook_pre"
        else:
            head = int(rest[1:])
            W = getattr(block.attn, f"W_{inp.upper()}")[head]

            def fix(act: torch.Tensor, hook: Any) -> torch.Tensor:
                act = act.clone()
                act[:, :, head] = act[:, :, head] + (src - cur["v"]) @ W
                return act
            r_hook = f"blocks.{layer}.attn.hook_{inp}"
    return module.run_with_hooks(tokens, fwd_hooks=[(w_hook, grab), (r_hook, fix)])


def all_edges(c: Any) -> list[tuple[str, str, str]]:
    """Every (writer, reader, input) edge of the model's residual graph."""
    writers = [("embed", -1, False), ("pos_embed", -1, False)]
    readers = []
    for layer in range(c.n_layers):
        writers += [(f"L{layer}.H{h}", layer, False) for h in range(c.n_heads)]
        writers.append((f"L{layer}.MLP", layer, True))
        readers += [(f"L{layer}.H{h}", layer, False, i) for h in range(c.n_heads) for i in ("q", "k", "v")]
        readers.append((f"L{layer}.MLP", layer, True, "in"))
    readers.append(("output", c.n_layers, False, "in"))
    return [(w, r, i) for w, wl, w_mlp in writers for r, rl, r_mlp, i in readers
            if wl < rl or (wl == rl and not w_mlp and r_mlp)]


def sweep_table(args: argparse.Namespace, name: str) -> None:
    model = library_model(name)
    c = model.config
    edges = all_edges(c)
    B = args.sweep_batch
    tokens = random_ids(model, B, seed=11)
    source = random_ids(model, B, seed=12)
    eng = Engine(model, device="cuda")
    sets = [[EdgePatch(*e)] for e in edges]
    say("")
    say(f"## Full edge sweep: {name} ({c.n_layers} layers, {c.n_heads} heads, d_model {c.d_model}), "
        f"{len(edges)} edges x batch {B}, metric KL")
    say("")
    t0 = time.perf_counter()
    eng.sweep(tokens, source, sets, "kl")
    t_first = time.perf_counter() - t0
    reps = []
    for _ in range(3):
        t0 = time.perf_counter()
        kl_eng = eng.sweep(tokens, source, sets, "kl")
        reps.append(time.perf_counter() - t0)
    t_eng = statistics.median(reps)
    cpu = Engine(model)
    t0 = time.perf_counter()
    kl_cpu = cpu.sweep(tokens, source, sets, "kl")
    t_cpu = time.perf_counter() - t0
    err = float(np.nanmax(np.abs(kl_eng - kl_cpu))) if len(edges) else 0.0
    module = model.to_torch().cuda().eval()
    t_ids, s_ids = torch.from_numpy(tokens).cuda(), torch.from_numpy(source).cuda()
    with torch.no_grad():
        _, src_cache = module.run_with_cache(s_ids)
        clean = torch.log_softmax(module(t_ids), -1)
        # hook loop: check a few edges against the engine, then time a sample and extrapolate
        outs_check = eng.sweep(tokens, source, sets[:3], "kl", return_outputs=True)[1]
        for k in range(min(3, len(edges))):
            hooked = hook_loop_edge(module, t_ids, src_cache, edges[k]).cpu().numpy()
            e = float(np.abs(hooked - outs_check[k]).max())
            if e > 1e-3:
                say(f"WARNING: hook loop and engine differ on edge {edges[k]} by {e}")
        sample = edges[: min(len(edges), args.hook_sample)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for e in sample:
            patched = torch.log_softmax(hook_loop_edge(module, t_ids, src_cache, e), -1)
            kl = (clean.exp() * (clean - patched)).sum(-1)[:, 1:].mean()
            float(kl)  # the loop needs each number on the host, as a search would
        torch.cuda.synchronize()
        t_hook = (time.perf_counter() - t0) / len(sample) * len(edges)
    say("| method | time for all edges | per edge | vs engine-cuda |")
    say("|---|---|---|---|")
    say(f"| engine-cuda sweep (one launch) | {fmt(t_eng)} | {fmt(t_eng / len(edges))} | 1.0x |")
    say(f"| engine-cpu sweep ({os.cpu_count()} threads) | {fmt(t_cpu)} | {fmt(t_cpu / len(edges))} | "
        f"{t_cpu / t_eng:.1f}x |")
    say(f"| torch CUDA hook loop (extrapolated from {len(sample)} edges) | {fmt(t_hook)} | "
        f"{fmt(t_hook / len(edges))} | {t_hook / t_eng:.1f}x |")
    say("")
    say(f"(engine-cuda first call incl. setup: {fmt(t_first)}; max |KL cuda - KL cpu| = {err:.2e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16,256,4096,65536")
    ap.add_argument("--programs", default="sort,shuffle_dyck2,second_largest")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-programs", default="sort", help="programs also timed under torch.compile "
                    "(each compile takes tens of seconds)")
    ap.add_argument("--sweep-program", default="majority,second_largest",
                    help="comma-separated programs for the full edge sweep (6-layer models)")
    ap.add_argument("--sweep-batch", type=int, default=32)
    ap.add_argument("--hook-sample", type=int, default=40, help="edges timed in the hook loop")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--scale-sizes", default="10,20,50", help="vocab = length sizes of the scaled-up "
                    "table ('' skips it; 100 compiles in about a minute and needs ~8 GB of host memory)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing to benchmark")
        return
    out = os.environ.get("OUT")
    if out:
        open(os.path.join(out, "gpu_bench.md"), "w").close()
    info = build_info()
    say(f"# GPU benchmark: {torch.cuda.get_device_name(0)}")
    say("")
    say(f"torch {torch.__version__}, engine {info['version']} ({info['build_type']}), "
        f"CUDA device {info['cuda_device_name']}")
    say("")
    if not args.skip_forward:
        forward_table(args)
        kernel_table(args)
    if args.scale_sizes:
        scale_table(args)
    if not args.skip_sweep:
        for name in args.sweep_program.split(","):
            sweep_table(args, name)


if __name__ == "__main__":
    main()
