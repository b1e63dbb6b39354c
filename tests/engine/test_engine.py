"""The C++ engine against an independent float64 reference (tests/support/engine_reference.py): plain and
cached forward passes, node/edge/subspace patches, sweeps and their metrics, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from support.engine_reference import (
    kl_rows,
    random_model,
    random_tokens,
    reference_run,
    upstream,
    writer_names,
)

from rasp_compiler.engine import EdgePatch, Engine, EngineError, NodePatch, cuda_available, hook_kinds

MODEL_CASES = [
    (seed, sparse, pad)
    for seed in range(12)
    for sparse, pad in ((False, False), (True, False), (False, True), (True, True))
]


def tol(ref: np.ndarray) -> float:
    """float32 engine vs float64 reference: relative to the size of the values involved."""
    finite = ref[np.isfinite(ref)]
    return 2e-5 * (1.0 + (float(np.abs(finite).max()) if finite.size else 0.0))


def assert_close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    both_inf = np.isinf(ref) & (got == ref)
    err = np.abs(np.where(both_inf, 0.0, got.astype(np.float64) - np.where(both_inf, 0.0, ref)))
    assert np.all(np.isfinite(err)), what
    assert err.max(initial=0.0) <= tol(ref), f"{what}: max abs error {err.max()} > {tol(ref)}"


@pytest.mark.parametrize("seed,sparse,pad", MODEL_CASES)
def test_forward_matches_reference(seed: int, sparse: bool, pad: bool) -> None:
    model = random_model(seed, sparse=sparse, pad=pad)
    tokens = random_tokens(model, batch=5, seed=seed + 100)
    ref, _, _ = reference_run(model, tokens)
    for threads in (1, 2):
        got = Engine(model, threads=threads).run(tokens)
        assert got.dtype == np.float32
        assert_close(got, ref, f"forward threads={threads}")


@pytest.mark.parametrize("seed,sparse,pad", MODEL_CASES[::3])
def test_run_with_cache_matches_reference(seed: int, sparse: bool, pad: bool) -> None:
    model = random_model(seed, sparse=sparse, pad=pad)
    tokens = random_tokens(model, batch=3, seed=seed)
    engine = Engine(model, threads=2)
    out, cache = engine.run_with_cache(tokens)
    ref_out, _, ref_cache = reference_run(model, tokens)
    assert_close(out, ref_out, "out")
    assert set(cache) == set(hook_kinds(model.config.n_layers)) == set(ref_cache)
    for name, ref in ref_cache.items():
        assert_close(cache[name], ref, name)
    _, some = engine.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    assert sorted(some) == [f"blocks.{l}.attn.hook_pattern" for l in range(model.config.n_layers)]


def test_shorter_sequences_and_single_sequence() -> None:
    model = random_model(3, sparse=True)
    engine = Engine(model, threads=1)
    for T in range(1, model.config.n_ctx + 1):
        tokens = random_tokens(model, batch=2, seed=T, seq=T)
        ref, _, _ = reference_run(model, tokens)
        assert_close(engine.run(tokens), ref, f"T={T}")
    one = random_tokens(model, batch=1, seed=9)
    assert engine.run(one[0]).shape == (one.shape[1], model.config.d_vocab_out)
    np.testing.assert_array_equal(engine.run(one[0]), engine.run(one)[0])


def _random_patches(model, rng: np.random.Generator, n_nodes: int, n_edges: int, subspace: bool):
    c = model.config
    D = c.d_model
    writers = writer_names(c)
    readers = [(f"L{l}.H{h}", i) for l in range(c.n_layers) for h in range(c.n_heads) for i in "qkv"]
    readers += [(f"L{l}.MLP", "in") for l in range(c.n_layers)] + [("output", "in")]
    nodes: dict = {}
    edges: dict = {}

    def draw_subspace():
        if not subspace or rng.random() < 0.3:
            return None
        if rng.random() < 0.5:
            return sorted({int(i) for i in rng.integers(0, D, size=int(rng.integers(1, D + 1)))})
        return (rng.standard_normal((D, D)) * 0.5).astype(np.float32)

    for w in rng.permutation(writers)[:n_nodes]:
        nodes[str(w)] = draw_subspace()
    pairs = [(w, r, i) for w in writers for r, i in readers if upstream(w, r, c.n_layers)]
    for k in rng.permutation(len(pairs))[:n_edges]:
        edges[pairs[k]] = draw_subspace()
    return nodes, edges


def _as_patch_list(model, nodes: dict, edges: dict) -> list:
    labels = model.config.residual_labels
    patches: list = []
    for name, sub in nodes.items():
        if sub is None:
            patches.append(name)
        else:  # give masks by residual label to exercise the label path
            patches.append(NodePatch(name, [labels[i] for i in sub] if isinstance(sub, list) else sub))
    for (w, r, i), sub in edges.items():
        patches.append((w, r, i) if sub is None else EdgePatch(w, r, i, sub))
    return patches


@pytest.mark.parametrize("seed,sparse,pad", MODEL_CASES[::2])
@pytest.mark.parametrize("kind", ["nodes", "edges", "mixed", "subspace"])
def test_patched_run_matches_reference(seed: int, sparse: bool, pad: bool, kind: str) -> None:
    model = random_model(seed, sparse=sparse, pad=pad)
    tokens = random_tokens(model, batch=4, seed=seed + 1)
    source = random_tokens(model, batch=4, seed=seed + 2)
    rng = np.random.default_rng(seed * 7 + len(kind))
    n_nodes, n_edges = {"nodes": (2, 0), "edges": (0, 3), "mixed": (2, 3), "subspace": (2, 4)}[kind]
    nodes, edges = _random_patches(model, rng, n_nodes, n_edges, subspace=kind == "subspace")
    ref, _, _ = reference_run(model, tokens, source, nodes, edges)
    got = Engine(model, threads=2).run_patched(tokens, source, _as_patch_list(model, nodes, edges))
    assert_close(got, ref, f"{kind}: nodes={list(nodes)} edges={list(edges)}")


def test_every_single_edge_matches_reference() -> None:
    model = random_model(5, sparse=True, n_layers=2)
    tokens, source = random_tokens(model, 3, 1), random_tokens(model, 3, 2)
    engine = Engine(model, threads=2)
    nodes, edges_all = _random_patches(model, np.random.default_rng(0), 0, 10**6, subspace=False)
    assert len(edges_all) > 20
    sets = [[e] for e in edges_all]
    _, outs = engine.sweep(tokens, source, sets, "mse", return_outputs=True)
    for k, e in enumerate(edges_all):
        ref, _, _ = reference_run(model, tokens, source, edges={e: None})
        assert_close(outs[k], ref, f"edge {e}")


def test_edge_patch_equals_hand_computed_residual_decomposition() -> None:
    """Edge L0.H0 -> L1.MLP (in) of a 2-layer model, computed by hand from clean/source caches:
    the MLP input is resid_mid - clean head output + source head output; the head's other readers,
    and everything else, see the clean run; the final residual changes only by the MLP's output."""
    model = random_model(11, n_layers=2)
    W = {k: v.astype(np.float64) for k, v in model.weights.items()}
    tokens, source = random_tokens(model, 4, 3), random_tokens(model, 4, 4)
    _, _, clean = reference_run(model, tokens)
    _, _, src = reference_run(model, source)
    head_clean = clean["blocks.0.attn.hook_result"][:, :, 0]
    head_src = src["blocks.0.attn.hook_result"][:, :, 0]
    mlp_in = clean["blocks.1.hook_resid_mid"] - head_clean + head_src
    mlp_out = (
        np.maximum(mlp_in @ W["blocks.1.mlp.W_in"] + W["blocks.1.mlp.b_in"], 0) @ W["blocks.1.mlp.W_out"]
    )
    mlp_out = mlp_out + W["blocks.1.mlp.b_out"]
    final = clean["blocks.1.hook_resid_post"] - clean["blocks.1.hook_mlp_out"] + mlp_out
    want = final @ W["W_U"] + W["b_U"]
    got = Engine(model).run_patched(tokens, source, [("L0.H0", "L1.MLP", "in")])
    assert_close(got, want, "hand-computed edge patch")
    # and the same edge into the output instead: only the unembedding input changes
    want_out = (clean["blocks.1.hook_resid_post"] - head_clean + head_src) @ W["W_U"] + W["b_U"]
    got_out = Engine(model).run_patched(tokens, source, [("L0.H0", "output", "in")])
    assert_close(got_out, want_out, "hand-computed edge into output")


def test_patching_with_source_equal_to_clean_changes_nothing() -> None:
    model = random_model(4, sparse=True)
    tokens = random_tokens(model, 3, 5)
    engine = Engine(model, threads=2)
    clean = engine.run(tokens)
    writers = writer_names(model.config)
    got = engine.run_patched(tokens, tokens, writers + [(w, "output", "in") for w in writers[:3]])
    assert_close(got, clean.astype(np.float64), "self-patch")


def test_full_patch_of_every_node_gives_source_output() -> None:
    model = random_model(6)
    tokens, source = random_tokens(model, 3, 1), random_tokens(model, 3, 2)
    engine = Engine(model)
    got = engine.run_patched(tokens, source, writer_names(model.config))
    want = engine.run(source)
    np.testing.assert_allclose(got, want, atol=tol(want))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sweep_metrics_match_numpy(seed: int) -> None:
    model = random_model(seed, pad=seed % 2 == 1)
    c = model.config
    tokens, source = random_tokens(model, 6, seed), random_tokens(model, 6, seed + 50)
    engine = Engine(model, threads=2)
    rng = np.random.default_rng(seed)
    sets = [
        _as_patch_list(
            model,
            *_random_patches(model, rng, int(rng.integers(0, 3)), int(rng.integers(0, 4)), subspace=True),
        )
        for _ in range(7)
    ]
    clean, src_out = engine.run(tokens), engine.run(source)
    outs = np.stack([engine.run_patched(tokens, source, s) for s in sets])
    counted = np.ones(tokens.shape, bool)
    counted[:, 0] = False
    if c.pad_token_id is not None:
        counted &= tokens != c.pad_token_id
    yc, ys = clean.argmax(-1), src_out.argmax(-1)
    for metric in ("kl", "logit_diff", "accuracy", "mse"):
        got = engine.sweep(tokens, source, sets, metric)
        per = engine.sweep(tokens, source, sets, metric, per_example=True)
        assert got.shape == (len(sets),) and per.shape == (len(sets), tokens.shape[0])
        for s in range(len(sets)):
            p = outs[s]
            if metric == "kl":
                vals, mask = kl_rows(clean, p), counted
            elif metric == "logit_diff":
                vals = (
                    np.take_along_axis(p, yc[..., None], -1)[..., 0]
                    - np.take_along_axis(p, ys[..., None], -1)[..., 0]
                )
                mask = counted & (yc != ys)
            elif metric == "accuracy":
                vals, mask = (p.argmax(-1) == yc).astype(float), counted
            else:
                vals, mask = ((p.astype(np.float64) - clean) ** 2).mean(-1), counted
            want = vals[mask].mean() if mask.any() else np.nan
            if np.isnan(want):
                assert np.isnan(got[s])
            else:
                assert abs(got[s] - want) <= 1e-4 * (1 + abs(want)), (metric, s, got[s], want)
            for b in range(tokens.shape[0]):
                wb = vals[b][mask[b]].mean() if mask[b].any() else np.nan
                assert (np.isnan(wb) and np.isnan(per[s, b])) or abs(per[s, b] - wb) <= 1e-4 * (1 + abs(wb))


def test_sweep_is_thread_count_independent_and_shares_one_source() -> None:
    model = random_model(8, sparse=True)
    tokens = random_tokens(model, 7, 1)
    source = random_tokens(model, 1, 2)
    sets = [[w] for w in writer_names(model.config)]
    a = Engine(model, threads=1).sweep(tokens, source, sets, "kl", per_example=True)
    b = Engine(model, threads=2).sweep(tokens, source, sets, "kl", per_example=True)
    np.testing.assert_array_equal(a, b)
    c = Engine(model, threads=2).sweep(tokens, np.repeat(source, 7, 0), sets, "kl", per_example=True)
    np.testing.assert_array_equal(a, c)


def test_numerical_model_metrics() -> None:
    model = random_model(2, output_encoding="numerical")
    engine = Engine(model)
    tokens, source = random_tokens(model, 4, 1), random_tokens(model, 4, 2)
    with pytest.raises(EngineError, match="numerical"):
        engine.sweep(tokens, source, [["embed"]], "kl")
    acc = engine.sweep(tokens, source, [[], ["embed"]], "accuracy", atol=1e-6)
    assert acc[0] == 1.0
    mse = engine.sweep(tokens, source, [[]], "mse")
    assert mse[0] == 0.0


def test_torch_tensors_in_and_out() -> None:
    import torch

    model = random_model(1)
    engine = Engine(model)
    tokens = random_tokens(model, 2, 3)
    out = engine.run(torch.from_numpy(tokens))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), engine.run(tokens))


# ------------------------------------------------------------------------------------------ bad input


def test_bad_tokens_raise_clear_errors() -> None:
    model = random_model(0)
    c = model.config
    engine = Engine(model)
    good = random_tokens(model, 2, 0)
    with pytest.raises(EngineError, match="integer"):
        engine.run(good.astype(np.float32))
    with pytest.raises(EngineError, match=r"token id .* outside"):
        engine.run(np.full((1, 2), c.d_vocab))
    with pytest.raises(EngineError, match=r"token id -1"):
        engine.run(np.array([[0, -1]]))
    with pytest.raises(EngineError, match="exceeds n_ctx"):
        engine.run(np.zeros((1, c.n_ctx + 1), dtype=np.int64))
    with pytest.raises(EngineError, match="shape"):
        engine.run(np.zeros((1, 2, 3), dtype=np.int64))
    with pytest.raises(EngineError, match="empty"):
        engine.run(np.zeros((1, 0), dtype=np.int64))
    with pytest.raises(EngineError, match="source_tokens shape"):
        engine.run_patched(good, good[:, :-1], ["embed"])


def test_bad_patches_raise_clear_errors() -> None:
    model = random_model(0, n_layers=2)
    c = model.config
    engine = Engine(model)
    t = random_tokens(model, 2, 0)
    with pytest.raises(EngineError, match=r"L9\.H0 does not exist"):
        engine.run_patched(t, t, ["L9.H0"])
    with pytest.raises(EngineError, match=rf"L0\.H{c.n_heads} does not exist"):
        engine.run_patched(t, t, [f"L0.H{c.n_heads}"])
    with pytest.raises(EngineError, match="not a writer"):
        engine.run_patched(t, t, ["blocks.0.attn"])
    with pytest.raises(EngineError, match="not upstream"):
        engine.run_patched(t, t, [("L1.MLP", "L0.H0", "q")])
    with pytest.raises(EngineError, match="not upstream"):
        engine.run_patched(t, t, [("L0.MLP", "L0.MLP", "in")])
    with pytest.raises(EngineError, match="not one of q, k, v, in"):
        engine.run_patched(t, t, [("embed", "L0.H0", "x")])
    with pytest.raises(EngineError, match="reads through q, k or v"):
        engine.run_patched(t, t, [("embed", "L0.H0", "in")])
    with pytest.raises(EngineError, match="output reader takes input 'in'"):
        engine.run_patched(t, t, [("embed", "output", "q")])
    with pytest.raises(EngineError, match="residual label 'nope'"):
        engine.run_patched(t, t, [NodePatch("embed", ["nope"])])
    with pytest.raises(EngineError, match="subspace matrix must be"):
        engine.run_patched(t, t, [NodePatch("embed", np.eye(c.d_model + 1, dtype=np.float32))])
    with pytest.raises(EngineError, match="patched twice"):
        engine.run_patched(t, t, ["embed", "embed"])
    with pytest.raises(EngineError, match="unknown metric"):
        engine.sweep(t, t, [["embed"]], "f1")
    with pytest.raises(EngineError, match="single patch"):
        engine.sweep(t, t, ["embed"], "kl")
    engine.run_patched(t, t, [("embed", "L1.MLP", "in")])  # now memoised: the fast path must still check
    with pytest.raises(EngineError, match="not a reader"):
        engine.run_patched(t, t, [("embed", ["L1.MLP"], "in")])
    with pytest.raises(EngineError, match="patched twice"):
        engine.run_patched(t, t, [("embed", "L1.MLP", "in"), ("embed", "L1.MLP", "in")])
    with pytest.raises(EngineError, match="unknown hook name"):
        engine.run_with_cache(t, ["blocks.0.hook_nothing"])


def test_bad_weights_raise_clear_errors() -> None:
    model = random_model(0)
    w = dict(model.weights)
    del w["W_U"]
    with pytest.raises(EngineError, match="lacks 'W_U'"):
        Engine(type(model)(config=model.config, weights=w))
    w = dict(model.weights)
    w["blocks.0.attn.W_Q"] = w["blocks.0.attn.W_Q"][:, :, :0]
    with pytest.raises(EngineError, match=r"blocks\.0\.attn\.W_Q.*shape"):
        Engine(type(model)(config=model.config, weights=w))
    w = dict(model.weights)
    w["W_E"] = w["W_E"].astype(np.int32)
    with pytest.raises(EngineError, match="floating point"):
        Engine(type(model)(config=model.config, weights=w))
    w = dict(model.weights)
    w["b_U"] = np.full_like(w["b_U"], np.nan)
    with pytest.raises(EngineError, match="non-finite"):
        Engine(type(model)(config=model.config, weights=w))
    if not cuda_available():  # where CUDA kernels and a device exist, device="cuda" is valid
        with pytest.raises(EngineError, match="cuda|CUDA"):
            Engine(model, device="cuda")
    with pytest.raises(EngineError, match="threads"):
        Engine(model, threads=0)


def test_source_outputs_replace_source_run_values() -> None:
    """Mean/zero ablation: given writer outputs stand in for the source run's."""
    model = random_model(9, n_layers=2)
    tokens, source = random_tokens(model, 3, 1), random_tokens(model, 3, 2)
    engine = Engine(model, threads=2)
    T, D = tokens.shape[1], model.config.d_model
    zero = np.zeros((1, T, D), np.float32)
    mean = np.random.default_rng(0).standard_normal((T, D)).astype(np.float32)
    given = {"L0.H0": zero, "L0.MLP": mean, "embed": zero}
    patches = ["L0.H0", ("L0.MLP", "L1.H0", "k"), ("embed", "output", "in")]
    got = engine.run_patched(tokens, None, patches, source_outputs=given)
    ref, _, _ = reference_run(
        model, tokens, None, {"L0.H0": None}, {patches[1]: None, patches[2]: None}, source_outputs=given
    )
    assert_close(got, ref, "source_outputs without source tokens")
    swept = engine.sweep(tokens, None, [patches], "mse", return_outputs=True, source_outputs=given)[1]
    assert_close(swept[0], ref, "source_outputs through sweep")
    # named writers are overridden, the others come from the run on source_tokens
    mixed = engine.run_patched(tokens, source, ["L0.H0", "L0.MLP"], source_outputs={"L0.H0": zero})
    ref_mixed, _, _ = reference_run(
        model, tokens, source, {"L0.H0": None, "L0.MLP": None}, source_outputs={"L0.H0": zero}
    )
    assert_close(mixed, ref_mixed, "source_outputs mixed with source tokens")
    with pytest.raises(EngineError, match="missing"):
        engine.run_patched(tokens, None, ["L1.MLP"], source_outputs={"L0.H0": zero})
    with pytest.raises(EngineError, match="expected shape"):
        engine.run_patched(tokens, source, ["L0.H0"], source_outputs={"L0.H0": np.zeros((2, 2))})
    with pytest.raises(EngineError, match="logit_diff"):
        engine.sweep(tokens, None, [patches], "logit_diff", source_outputs=given)


def test_single_patch_fast_path_and_encoded_sets_match_reference() -> None:
    """Every-single-edge / every-single-node sweeps (the cached fast path on the second call) and
    pre-encoded sets give the reference's outputs; names the engine never saw still get checked."""
    model = random_model(6, sparse=True, n_layers=2)
    tokens, source = random_tokens(model, 3, 1), random_tokens(model, 3, 2)
    engine = Engine(model, threads=1)
    _, edges_all = _random_patches(model, np.random.default_rng(1), 0, 10**6, subspace=False)
    edge_sets = [[e] for e in edges_all]
    node_sets = [[w] for w in writer_names(model.config)]
    for sets, kind in ((edge_sets, "edge"), (node_sets, "node")):
        first = engine.sweep(tokens, source, sets, "mse", return_outputs=True)[1]  # checks every name
        again = engine.sweep(tokens, source, sets, "mse", return_outputs=True)[1]  # fast path
        enc = engine.sweep(tokens, source, engine.encode(sets), "mse", return_outputs=True)[1]
        np.testing.assert_array_equal(first, again)
        np.testing.assert_array_equal(first, enc)
        for k, (p,) in enumerate(sets):
            nodes, edges = ({p: None}, None) if kind == "node" else (None, {p: None})
            ref, _, _ = reference_run(model, tokens, source, nodes, edges)
            assert_close(again[k], ref, f"{kind} {p}")
    with pytest.raises(EngineError, match="L7.H0"):
        engine.sweep(tokens, source, edge_sets + [[("L7.H0", "output", "in")]], "mse")
    with pytest.raises(EngineError, match="L9.MLP"):
        engine.sweep(tokens, source, node_sets + [["L9.MLP"]], "mse")
    with pytest.raises(EngineError, match="another Engine"):
        Engine(model, threads=1).sweep(tokens, source, engine.encode(node_sets), "mse")
    with pytest.raises(EngineError, match="one patch set"):
        engine.run_patched(tokens, source, engine.encode(node_sets))
    one = engine.run_patched(tokens, source, engine.encode([node_sets[2]]))
    ref, _, _ = reference_run(model, tokens, source, {node_sets[2][0]: None})
    assert_close(one, ref, "run_patched(EncodedSets)")


def test_sweep_reuses_clean_and_source_runs_only_for_identical_inputs() -> None:
    """The engine keeps the last sweep's clean/source runs; any change of tokens, source tokens (even
    in place) or source_outputs must recompute them: each result equals a fresh engine's."""
    model = random_model(4, n_layers=2)
    engine = Engine(model, threads=1)
    T, D = model.config.n_ctx, model.config.d_model
    sets = [["L0.H0"], [("L0.MLP", "output", "in")], ["L1.MLP", ("embed", "L1.H0", "q")]]
    tokens, source = random_tokens(model, 3, 1), random_tokens(model, 3, 2)
    mean = np.random.default_rng(3).standard_normal((1, tokens.shape[1], D)).astype(np.float32)

    def check(tok, src, given=None) -> None:
        kw = {"source_outputs": given} if given else {}
        got = engine.sweep(tok, src, sets, "mse", return_outputs=True, **kw)[1]
        want = Engine(model, threads=1).sweep(tok, src, sets, "mse", return_outputs=True, **kw)[1]
        np.testing.assert_array_equal(got, want)

    check(tokens, source)
    check(tokens, source)  # reused
    source[0, -1] = (source[0, -1] + 1) % model.config.d_vocab  # same array object, new content
    check(tokens, source)
    check(source, tokens)
    check(tokens, source, {"L0.MLP": mean})
    check(tokens, source, {"L0.MLP": mean + 1.0})
    check(tokens, source, {"L0.H0": mean + 1.0})
    check(tokens, None, {w: mean for w in ("L0.H0", "L0.MLP", "L1.MLP", "embed")})
    check(tokens, source)
    check(tokens[:2], source[:2])
    engine.forget_runs()
    check(tokens[:2], source[:2])
    assert T >= tokens.shape[1]


def test_patches_accept_the_circuit_vocabulary_objects() -> None:
    """`verify.Edge` objects and edge names are edges to the engine, exactly as the tuple form."""
    from verify import Edge

    model = random_model(1, n_layers=2)
    engine = Engine(model)
    t, s = random_tokens(model, 3, 1), random_tokens(model, 3, 2)
    _, found = _random_patches(model, np.random.default_rng(3), 0, 10**6, subspace=False)
    edges = list(found)
    sets = [[e] for e in edges[:12]]
    want = engine.sweep(t, s, sets, "mse")
    assert np.any(want > 0)  # some of these edges carry something, so equality below means something
    np.testing.assert_array_equal(engine.sweep(t, s, [[Edge(*e)] for e in edges[:12]], "mse"), want)
    np.testing.assert_array_equal(engine.sweep(t, s, [[str(Edge(*e))] for e in edges[:12]], "mse"), want)


@pytest.mark.parametrize("seed", range(6))
def test_causal_models_match_reference(seed: int) -> None:
    """A causal model (every key after the query masked): forward, cache and patched runs against the
    float64 reference, which masks the same keys; the pattern has nothing above the diagonal."""
    model = random_model(seed, sparse=seed % 2 == 1, pad=seed % 3 == 0, causal=True)
    tokens = random_tokens(model, batch=4, seed=seed + 10)
    source = random_tokens(model, batch=4, seed=seed + 20)
    engine = Engine(model, threads=2)
    ref, _, ref_cache = reference_run(model, tokens)
    out, cache = engine.run_with_cache(tokens)
    assert_close(out, ref, "causal forward")
    for name, want in ref_cache.items():
        assert_close(cache[name], want, f"causal {name}")
    T = tokens.shape[1]
    for layer in range(model.config.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert not pattern[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]].any()
    rng = np.random.default_rng(seed)
    nodes, edges = _random_patches(model, rng, 2, 3, subspace=seed % 2 == 0)
    want, _, _ = reference_run(model, tokens, source, nodes, edges)
    got = engine.run_patched(tokens, source, _as_patch_list(model, nodes, edges))
    assert_close(got, want, "causal patched run")
