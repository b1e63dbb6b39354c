"""The CUDA engine against the CPU engine: every operation (forward, cached forward, node / edge /
subspace patching, sweeps with every metric, torch CUDA tensors in and out) on every library program
and on random-weight models agrees within 1e-4 and decodes identically. Runs only where the
extension was built with CUDA and a GPU is visible; skipped with the reason elsewhere."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rasp_compiler import engine as engine_mod

if not engine_mod.build_info()["cuda_built"]:
    pytest.skip("CUDA tests: the extension was built without CUDA kernels (no nvcc at build time, or "
                "RASP_CUDA=0)", allow_module_level=True)
if not engine_mod.cuda_available():
    pytest.skip("CUDA tests: the extension has CUDA kernels but no CUDA device is visible",
                allow_module_level=True)

from support.engine_reference import random_model, random_tokens, upstream, writer_names  # noqa: E402
from support.library_models import compiled, library_batch  # noqa: E402
from support.model_factory import random_model as factory_model  # noqa: E402

from rasp_compiler.engine import EdgePatch, Engine, EngineError, NodePatch  # noqa: E402
from rasp_compiler.rasp.lib import LIBRARY  # noqa: E402

ATOL = 1e-4
NAMES = sorted(LIBRARY)


def check(got, want, categorical: bool, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"{what}: non-finite entries differ")
    if finite.any():
        err = float(np.abs(got[finite] - want[finite]).max())
        assert err <= ATOL, f"{what}: max abs error {err}"
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=what)  # -inf scores, NaN metrics
    if categorical and got.ndim >= 1 and got.shape[-1] > 1:
        # decoded answers must be identical wherever the answer is not a near-tie (patched runs with
        # random source values can put two logits within float rounding of each other)
        top2 = np.sort(want, axis=-1)[..., -2:]
        clear = (top2[..., 1] - top2[..., 0]) > 10 * ATOL
        np.testing.assert_array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear],
                                      err_msg=f"{what}: decoded outputs")


def all_edges(config) -> list[tuple[str, str, str]]:
    readers = [(f"L{layer}.H{h}", i) for layer in range(config.n_layers) for h in range(config.n_heads)
               for i in ("q", "k", "v")]
    readers += [(f"L{layer}.MLP", "in") for layer in range(config.n_layers)] + [("output", "in")]
    return [(w, r, i) for w in writer_names(config) for r, i in readers if upstream(w, r, config.n_layers)]


def compare_everything(model, tokens: np.ndarray, source: np.ndarray, seed: int, what: str) -> None:
    """Every engine operation on CPU and CUDA; outputs and metrics must agree."""
    cfg = model.config
    categorical = cfg.output_encoding == "categorical"
    cpu, gpu = Engine(model, threads=2), Engine(model, device="cuda")
    check(gpu.run(tokens), cpu.run(tokens), categorical, f"{what} forward")
    out_c, cache_c = cpu.run_with_cache(tokens)
    out_g, cache_g = gpu.run_with_cache(tokens)
    check(out_g, out_c, categorical, f"{what} cached forward output")
    assert cache_g.keys() == cache_c.keys()
    for hook in cache_c:
        check(cache_g[hook], cache_c[hook], False, f"{what} {hook}")
    # a chosen subset of hooks only (the kernel records only what is asked)
    some = [k for k in cache_c if k.endswith(("hook_pattern", "hook_mlp_out"))]
    _, part = gpu.run_with_cache(tokens, names=some)
    assert sorted(part) == sorted(some)
    for hook in some:
        check(part[hook], cache_c[hook], False, f"{what} {hook} (subset)")

    writers = writer_names(cfg)
    edges = all_edges(cfg)
    rng = random.Random(seed)
    labels = list(cfg.residual_labels)
    mat = np.random.default_rng(seed).standard_normal((cfg.d_model, cfg.d_model)).astype(np.float32) * 0.5
    sets: list[list] = [[w] for w in writers]                          # node patches
    sets += [[e] for e in edges]                                       # edge patches
    sets += [[NodePatch(w, rng.sample(labels, max(1, len(labels) // 3)))] for w in writers]   # node subspace
    sets += [[EdgePatch(*e, mat)] for e in rng.sample(edges, min(8, len(edges)))]           # edge matrix
    sets += [[NodePatch(rng.choice(writers), mat)]]                                         # node matrix
    sets.append([])                                                                         # nothing patched
    for _ in range(12):                                                                     # mixtures
        k_n, k_e = rng.randint(0, 3), rng.randint(1, 4)
        mix: list = rng.sample(writers, k_n)
        mix += [EdgePatch(*e, rng.choice([None, rng.sample(labels, 2), mat]))
                for e in rng.sample(edges, min(k_e, len(edges)))]
        sets.append(mix)
    metrics = ["kl", "logit_diff", "accuracy", "mse"] if categorical else ["accuracy", "mse"]
    near_tie = None
    for metric in metrics:
        first = metric == metrics[0]
        got = gpu.sweep(tokens, source, sets, metric, per_example=True, return_outputs=first)
        want = cpu.sweep(tokens, source, sets, metric, per_example=True, return_outputs=first)
        if first:
            check(got[1], want[1], categorical, f"{what} patched outputs")
        if first and categorical:
            top2 = np.sort(want[1], axis=-1)[..., -2:]
            near_tie = ((top2[..., 1] - top2[..., 0]) <= 10 * ATOL).any(axis=-1)  # [S, B]
        if first:
            got, want = got[0], want[0]
        if metric == "accuracy" and categorical:  # an argmax at a near-tie may go either way
            got, want = np.where(near_tie, 0.0, got), np.where(near_tie, 0.0, want)
        check(got, want, False, f"{what} sweep metric {metric}")
    # source outputs given directly (mean / zero / resample ablation), with and without a source run
    ov_writers = rng.sample(writers, min(3, len(writers)))
    T = tokens.shape[1]
    vals = np.random.default_rng(seed + 1).standard_normal((len(ov_writers), T, cfg.d_model))
    vals = vals.astype(np.float32)
    overrides = {w: vals[k][None] for k, w in enumerate(ov_writers)}
    ov_sets = [[w] for w in ov_writers] + [[e] for e in edges if e[0] in ov_writers][:30]
    for src_arg in (source, None):
        got = gpu.sweep(tokens, src_arg, ov_sets, "mse", per_example=True, return_outputs=True,
                        source_outputs=overrides)
        want = cpu.sweep(tokens, src_arg, ov_sets, "mse", per_example=True, return_outputs=True,
                         source_outputs=overrides)
        check(got[1], want[1], categorical, f"{what} overridden sources (source run: {src_arg is not None})")
        check(got[0], want[0], False, f"{what} overridden sources metric")
    patch = [writers[-1], edges[0]]
    check(gpu.run_patched(tokens, source, patch), cpu.run_patched(tokens, source, patch), categorical,
          f"{what} run_patched")


@pytest.mark.parametrize("name", NAMES)
def test_library_program_cuda_equals_cpu(name: str) -> None:
    model = compiled(name)
    compare_everything(model, library_batch(name, 6, 0), library_batch(name, 6, 1), 0, name)


@pytest.mark.parametrize("name", ["causal_induction", "frac_prevs", "hist", "reverse", "shuffle_dyck2"])
def test_causal_library_program_cuda_equals_cpu(name: str) -> None:
    model = compiled(name, causal=True)
    compare_everything(model, library_batch(name, 6, 0), library_batch(name, 6, 1), 0, f"causal {name}")


@pytest.mark.parametrize("seed", range(4))
def test_causal_random_model_cuda_equals_cpu(seed: int) -> None:
    model = random_model(seed, sparse=seed % 2 == 1, pad=seed % 3 == 0, causal=True)
    tokens, source = random_tokens(model, 5, seed), random_tokens(model, 5, seed + 100)
    compare_everything(model, tokens, source, seed, f"causal random model {seed}")


@pytest.mark.parametrize("seed", range(8))
def test_random_model_cuda_equals_cpu(seed: int) -> None:
    model = random_model(seed, sparse=seed % 2 == 1, pad=seed % 3 == 0,
                         output_encoding="numerical" if seed % 4 == 3 else "categorical")
    tokens, source = random_tokens(model, 5, seed), random_tokens(model, 5, seed + 100)
    compare_everything(model, tokens, source, seed, f"random model {seed}")


@pytest.mark.parametrize("d_model,d_head", [(128, 16), (384, 32)])
def test_larger_models_agree(d_model: int, d_head: int) -> None:
    """Beyond 48 KB of per-sequence state (opt-in shared memory) and beyond the shared memory of a
    block (the global-memory workspace): same results."""
    model = factory_model(3, n_layers=2, d_model=d_model, n_heads=4, d_head=d_head, d_mlp=200, max_seq_len=48,
                          vocab=tuple(range(1, 9)), scale=0.05)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, model.config.d_vocab, size=(3, 49))
    tokens[:, 0] = 0
    source = rng.integers(1, model.config.d_vocab, size=(3, 49))
    source[:, 0] = 0
    cpu, gpu = Engine(model, threads=2), Engine(model, device="cuda")
    check(gpu.run(tokens), cpu.run(tokens), True, "large forward")
    sets = [["L0.H1"], [("L0.H0", "L1.MLP", "in")], [("embed", "L1.H2", "k"), "L1.MLP"]]
    check(gpu.sweep(tokens, source, sets, "kl", per_example=True),
          cpu.sweep(tokens, source, sets, "kl", per_example=True), False, "large sweep")


@pytest.mark.parametrize("block", [32, 64, 256])
def test_block_size_does_not_change_results(block: int) -> None:
    model = compiled("sort")
    tokens, source = library_batch("sort", 7, 3), library_batch("sort", 7, 4)
    cpu, gpu = Engine(model, threads=2), Engine(model, device="cuda")
    gpu._core.set_block_threads(block)
    check(gpu.run(tokens), cpu.run(tokens), True, f"block {block} forward")
    sets = [[e] for e in all_edges(model.config)]
    check(gpu.sweep(tokens, source, sets, "kl", per_example=True),
          cpu.sweep(tokens, source, sets, "kl", per_example=True), False, f"block {block} sweep")


def test_big_batch_forward() -> None:
    model = compiled("reverse")
    tokens = library_batch("reverse", 3000, 5)
    cpu, gpu = Engine(model, threads=2), Engine(model, device="cuda")
    check(gpu.run(tokens), cpu.run(tokens), True, "batch 3000")


def test_torch_cuda_tensors_stay_on_device() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA tests: torch was built without CUDA (needed to hand CUDA tensors to the engine)")
    model = compiled("most_frequent")
    tokens = library_batch("most_frequent", 9, 2)
    cpu, gpu = Engine(model, threads=2), Engine(model, device="cuda")
    want = cpu.run(tokens)
    t = torch.from_numpy(tokens).cuda()
    out = gpu.run(t)
    assert out.is_cuda and out.dtype == torch.float32 and tuple(out.shape) == want.shape
    check(out.cpu().numpy(), want, True, "torch cuda int64 input")
    one = gpu.run(t[0].to(torch.int32))
    check(one.cpu().numpy(), want[0], True, "torch cuda 1-D input")
    with torch.cuda.stream(torch.cuda.Stream()):
        out2 = gpu.run(t)
    torch.cuda.synchronize()
    check(out2.cpu().numpy(), want, True, "torch cuda side stream")
    bad = t.clone()
    bad[0, 1] = model.config.d_vocab
    with pytest.raises(EngineError, match="outside"):
        gpu.run(bad)
    with pytest.raises(EngineError, match="integer"):
        gpu.run(t.float())
    # the engine still works after a rejected input
    check(gpu.run(t).cpu().numpy(), want, True, "after error")


def test_cuda_bad_input_is_rejected_clearly() -> None:
    gpu = Engine(compiled("sort"), device="cuda")
    with pytest.raises(EngineError, match="outside"):
        gpu.run(np.array([[0, 99]]))
    with pytest.raises(EngineError, match="not upstream"):
        gpu.sweep(library_batch("sort", 2, 0), library_batch("sort", 2, 1), [[("L1.MLP", "L0.H0", "q")]])


# Warp mode (one warp per sequence, several sequences per block, register-capped kernel) is what large
# batches take automatically; these force it (and block mode) at small sizes so that every operation is
# compared in both modes and with each register cap.
@pytest.mark.parametrize("mode,min_blocks,name", [("new", "2", "sort"), ("new", "4", "shuffle_dyck2"),
                                                  ("new", "1", "second_largest"), ("new", "2", "hist"),
                                                  ("new", "2", "most_frequent")])
def test_warp_mode_equals_cpu(mode: str, min_blocks: str, name: str, monkeypatch) -> None:
    monkeypatch.setenv("RASP_CUDA_KERNEL", mode)
    monkeypatch.setenv("RASP_CUDA_MINBLOCKS", min_blocks)
    compare_everything(compiled(name), library_batch(name, 7, 0), library_batch(name, 7, 1), 0,
                       f"{name} ({mode}, min blocks {min_blocks})")


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_warp_mode_random_models(seed: int, monkeypatch) -> None:
    monkeypatch.setenv("RASP_CUDA_KERNEL", "new")
    model = random_model(seed, sparse=seed % 2 == 1, pad=seed % 3 == 0,
                         output_encoding="numerical" if seed % 4 == 3 else "categorical")
    tokens, source = random_tokens(model, 9, seed), random_tokens(model, 9, seed + 100)
    compare_everything(model, tokens, source, seed, f"random model {seed} (warp mode)")


@pytest.mark.parametrize("mode", ["old", "new", "auto"])
def test_kernel_modes_big_batch_and_bad_tokens(mode: str, monkeypatch) -> None:
    """Every mode at a batch that is not a multiple of the groups per block; a bad token in one sequence
    of a large batch is reported whichever warp meets it, and the engine works afterwards."""
    monkeypatch.setenv("RASP_CUDA_KERNEL", mode)
    model = compiled("sort")
    tokens = library_batch("sort", 2501, 6)
    cpu, gpu = Engine(model, threads=2), Engine(model, device="cuda")
    want = cpu.run(tokens)
    check(gpu.run(tokens), want, True, f"batch 2501 ({mode})")
    for block in (64, 256):
        gpu._core.set_block_threads(block)
        check(gpu.run(tokens), want, True, f"batch 2501 ({mode}, block {block})")
    bad = tokens.copy()
    bad[1777, 2] = model.config.d_vocab
    with pytest.raises(EngineError, match="outside"):
        gpu.run(bad)
    check(gpu.run(tokens), want, True, f"batch 2501 ({mode}) after error")


def test_bad_kernel_mode_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("RASP_CUDA_KERNEL", "fastest")
    with pytest.raises((EngineError, ValueError), match="RASP_CUDA_KERNEL"):
        Engine(compiled("sort"), device="cuda")


@pytest.mark.parametrize("mode,xskip", [("new", "1"), ("new", "0"), ("new", "2"), ("old", "1")])
def test_long_sequences_in_both_modes(mode: str, xskip: str, monkeypatch) -> None:
    """Sequences longer than warp mode's register tile of 8 positions (several tiles, a partial last one),
    with warp mode's row skipping on and off (each tile lists its own nonzero rows)."""
    monkeypatch.setenv("RASP_CUDA_KERNEL", mode)
    monkeypatch.setenv("RASP_CUDA_XSKIP", xskip)
    model = factory_model(5, n_layers=2, d_model=24, n_heads=2, d_head=6, d_mlp=20, max_seq_len=20,
                          vocab=tuple(range(1, 7)), scale=0.3)
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, model.config.d_vocab, size=(5, 21))
    tokens[:, 0] = 0
    source = rng.integers(1, model.config.d_vocab, size=(5, 21))
    source[:, 0] = 0
    compare_everything(model, tokens, source, 5, f"T=21 ({mode}, row skipping {xskip})")


@pytest.mark.parametrize("xskip,name", [("0", "sort"), ("1", "sort"), ("2", "sort"), ("0", "second_largest"),
                                        ("1", "second_largest"), ("2", "shuffle_dyck2")])
def test_warp_mode_row_skipping_on_and_off(xskip: str, name: str, monkeypatch) -> None:
    """Warp mode with and without skipping all-zero input rows (RASP_CUDA_XSKIP) matches the CPU engine on
    every operation; compiled residual streams are nearly one-hot, so skipping is taken on most matmuls."""
    monkeypatch.setenv("RASP_CUDA_KERNEL", "new")
    monkeypatch.setenv("RASP_CUDA_XSKIP", xskip)
    compare_everything(compiled(name), library_batch(name, 6, 2), library_batch(name, 6, 3), 2,
                       f"{name} (warp mode, row skipping {xskip})")


def test_bad_row_skipping_setting_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("RASP_CUDA_XSKIP", "yes")
    with pytest.raises((EngineError, ValueError), match="RASP_CUDA_XSKIP"):
        Engine(compiled("sort"), device="cuda")


# Each weight matrix is uploaded as dense rows or, when mostly zero within its non-zero rows, as CSR only
# (RASP_CUDA_SPARSE=auto); these force each form everywhere, in both kernel modes and with warp mode's row
# lists on and off, on models with several heads (per-head W_O rows, per-head q/k/v edge corrections).
@pytest.mark.parametrize("sparse,mode,xskip,name", [
    ("1", "old", "1", "sort"), ("1", "new", "1", "sort"), ("1", "new", "0", "shuffle_dyck2"),
    ("1", "new", "2", "shuffle_dyck2"), ("1", "old", "1", "shuffle_dyck2"),
    ("1", "new", "1", "most_frequent"),
    ("0", "old", "1", "shuffle_dyck2"), ("0", "new", "2", "most_frequent")])
def test_weight_forms_equal_cpu(sparse: str, mode: str, xskip: str, name: str, monkeypatch) -> None:
    monkeypatch.setenv("RASP_CUDA_SPARSE", sparse)
    monkeypatch.setenv("RASP_CUDA_KERNEL", mode)
    monkeypatch.setenv("RASP_CUDA_XSKIP", xskip)
    compare_everything(compiled(name), library_batch(name, 6, 4), library_batch(name, 6, 5), 4,
                       f"{name} (weights sparse={sparse}, kernel {mode}, row skipping {xskip})")


@pytest.mark.parametrize("sparse,mode", [("1", "old"), ("1", "new")])
def test_csr_weights_random_models_long_sequences(sparse: str, mode: str, monkeypatch) -> None:
    """CSR weights on dense random weights, pads and sequences longer than warp mode's tile of 8."""
    monkeypatch.setenv("RASP_CUDA_SPARSE", sparse)
    monkeypatch.setenv("RASP_CUDA_KERNEL", mode)
    model = factory_model(6, n_layers=2, d_model=24, n_heads=2, d_head=6, d_mlp=20, max_seq_len=20,
                          vocab=tuple(range(1, 7)), scale=0.3)
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, model.config.d_vocab, size=(4, 21))
    tokens[:, 0] = 0
    source = rng.integers(1, model.config.d_vocab, size=(4, 21))
    source[:, 0] = 0
    compare_everything(model, tokens, source, 6, f"T=21 (weights sparse={sparse}, kernel {mode})")
    for seed in (0, 3):
        rand = random_model(seed, sparse=True, pad=seed == 0)
        compare_everything(rand, random_tokens(rand, 7, seed), random_tokens(rand, 7, seed + 50), seed,
                           f"random model {seed} (weights sparse={sparse}, kernel {mode})")


@pytest.mark.parametrize("mode", ["old", "new"])
def test_large_sorting_model(mode: str, monkeypatch) -> None:
    """sort at 20 values x 20 positions: its comparison head's W_Q/W_K are a few per cent non-zero within
    their non-zero rows, so the automatic choice uploads them as CSR (far less device memory); outputs
    as the CPU engine's and as dense rows', answers as the evaluator's."""
    from rasp_compiler import rasp
    from rasp_compiler.compiler import compiling
    from rasp_compiler.rasp import lib

    monkeypatch.setenv("RASP_CUDA_KERNEL", mode)
    monkeypatch.setenv("RASP_CUDA_SPARSE", "auto")
    program = lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=20, min_key=1)
    model = compiling.compile_rasp_to_model(program, set(range(1, 21)), 20)
    rng = np.random.default_rng(7)
    inputs = [[int(v) for v in rng.integers(1, 21, 20)] for _ in range(40)]
    tokens = np.array([model.encode(["BOS", *xs]) for xs in inputs])
    gpu = Engine(model, device="cuda")
    out = gpu.run(tokens)
    check(out, Engine(model, threads=2).run(tokens), True, f"sort 20x20 ({mode})")
    stats = gpu.stats()
    assert stats["csr_matrices"] >= 1, stats
    monkeypatch.setenv("RASP_CUDA_SPARSE", "0")
    dense = Engine(model, device="cuda")
    assert dense.stats()["csr_matrices"] == 0
    assert stats["weight_bytes"] < dense.stats()["weight_bytes"] / 4, (stats, dense.stats())
    check(dense.run(tokens), out, True, f"sort 20x20 ({mode}, dense rows)")
    for xs, row in zip(inputs, out, strict=True):  # the answers themselves: the evaluator's
        assert model.decode(row)[1:] == rasp.evaluate(program, xs)


def test_bad_weight_form_setting_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("RASP_CUDA_SPARSE", "csr")
    with pytest.raises((EngineError, ValueError), match="RASP_CUDA_SPARSE"):
        Engine(compiled("sort"), device="cuda")
