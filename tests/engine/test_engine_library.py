"""The engine against the PyTorch reference module on every compiled library program: plain,
cached, node-, edge- and subspace-patched runs agree within 1e-5 and decode identically."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch
from support.engine_reference import upstream, writer_names  # noqa: E402
from support.library_models import compiled, library_batch  # noqa: E402

from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.engine import EdgePatch, Engine, NodePatch, torch_patched_run  # noqa: E402
from rasp_compiler.rasp.lib import LIBRARY  # noqa: E402

ATOL = 1e-5
NAMES = sorted(LIBRARY)


def check(got: np.ndarray, want: np.ndarray, categorical: bool, what: str) -> None:
    err = float(np.abs(got - want).max())
    assert err <= ATOL, f"{what}: max abs error {err}"
    if categorical:
        # decoded answers must agree wherever the reference's answer is not a (near-)tie: a patched run
        # is off-distribution and can leave two logits equal, where either argmax is right
        top2 = np.sort(want, axis=-1)[..., -2:] if want.shape[-1] > 1 else None
        decided = (
            np.ones(want.shape[:-1], bool) if top2 is None else (top2[..., 1] - top2[..., 0]) > 10 * ATOL
        )
        np.testing.assert_array_equal(got.argmax(-1)[decided], want.argmax(-1)[decided], err_msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_library_program_engine_equals_torch(name: str) -> None:
    model = compiled(name)
    module = model.to_torch()
    categorical = model.config.output_encoding == "categorical"
    tokens, source = library_batch(name, 8, 0), library_batch(name, 8, 1)
    engine = Engine(model, threads=2)
    with torch.no_grad():
        want, cache = module.run_with_cache(torch.from_numpy(tokens))
    out, ecache = engine.run_with_cache(tokens)
    check(out, want.numpy(), categorical, f"{name} forward")
    for hook, act in cache.items():
        a, b = ecache[hook], act.numpy()
        finite = np.isfinite(b)
        assert np.array_equal(finite, np.isfinite(a)), f"{name} {hook}: inf positions differ"
        # intermediate activations (scores of large inverse temperature, MLP pre-activations) can be
        # large: their float32 rounding differs between summation orders, so the bound scales with them
        scale = 1.0 + float(np.abs(b[finite]).max(initial=0.0))
        assert float(np.abs(a[finite] - b[finite]).max(initial=0.0)) <= ATOL * scale, f"{name} {hook}"

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    writers = writer_names(model.config)
    c = model.config
    readers = [
        (f"L{l}.H{h}", i) for l in range(c.n_layers) for h in range(c.heads_per_layer[l]) for i in "qkv"
    ]
    readers += [(f"L{l}.MLP", "in") for l in range(c.n_layers)] + [("output", "in")]
    edges = [(w, r, i) for w in writers for r, i in readers if upstream(w, r, c.n_layers)]
    labels = c.residual_labels
    cases = {
        "node": [str(w) for w in rng.permutation(writers)[:2]],
        "edge": [edges[k] for k in rng.permutation(len(edges))[:3]],
        "subspace": [
            NodePatch(str(rng.choice(writers)), [labels[k] for k in rng.permutation(len(labels))[:5]]),
            EdgePatch(
                *edges[int(rng.integers(len(edges)))], [labels[k] for k in rng.permutation(len(labels))[:8]]
            ),
        ],
    }
    for kind, patches in cases.items():
        got = engine.run_patched(tokens, source, patches)
        ref = torch_patched_run(module, tokens, source, patches)
        check(got, ref, categorical, f"{name} {kind} {patches}")


def test_random_programs_engine_equals_torch() -> None:
    """100 generated programs: plain, node-patched and edge-patched runs agree with the torch module."""
    from rasp_compiler.testing import generate

    checked = 0
    refused: list[str] = []
    for k, gp in enumerate(generate.sample_programs(100, seed=1234, max_layers=4, max_ops=8)):
        try:
            model = compiling.compile_rasp_to_model(gp.program, set(gp.vocab), gp.max_seq_len)
        except Exception as exc:  # the compiler may refuse a program; that is its business, not ours
            refused.append(f"{k}: {type(exc).__name__}")
            continue
        module = model.to_torch()
        categorical = model.config.output_encoding == "categorical"
        rng = random.Random(k)
        T = gp.lengths[-1]
        bos = model.codec.bos
        tokens = np.array([model.encode([bos, *[rng.choice(gp.vocab) for _ in range(T)]]) for _ in range(4)])
        source = np.array([model.encode([bos, *[rng.choice(gp.vocab) for _ in range(T)]]) for _ in range(4)])
        engine = Engine(model, threads=1)
        with torch.no_grad():
            want = module(torch.from_numpy(tokens)).numpy()
        check(engine.run(tokens), want, categorical, f"program {k} forward")
        c = model.config
        writers = writer_names(c)
        readers = [(f"L{l}.MLP", "in") for l in range(c.n_layers)] + [("output", "in")]
        readers += [
            (f"L{l}.H{h}", i) for l in range(c.n_layers) for h in range(c.heads_per_layer[l]) for i in "qkv"
        ]
        edges = [(w, r, i) for w in writers for r, i in readers if upstream(w, r, c.n_layers)]
        patches = [rng.choice(writers), rng.choice(edges), rng.choice(edges)]
        patches = list(dict.fromkeys(patches))
        sub_edge = rng.choice(edges)  # and one subspace-restricted edge
        if sub_edge not in patches:
            patches.append(EdgePatch(*sub_edge, rng.sample(c.residual_labels, max(1, c.d_model // 3))))
        check(
            engine.run_patched(tokens, source, patches),
            torch_patched_run(module, tokens, source, patches),
            categorical,
            f"program {k} patched {patches}",
        )
        if k % 4 == 0:  # every hook of the cached run, on a quarter of the programs
            with torch.no_grad():
                _, cache = module.run_with_cache(torch.from_numpy(tokens))
            _, ecache = engine.run_with_cache(tokens)
            for hook, act in cache.items():
                a, b = ecache[hook], act.numpy()
                finite = np.isfinite(b)
                scale = 1.0 + float(np.abs(b[finite]).max(initial=0.0))
                assert np.array_equal(finite, np.isfinite(a)), f"program {k} {hook}: inf positions differ"
                assert float(np.abs(a[finite] - b[finite]).max(initial=0.0)) <= ATOL * scale, (
                    f"program {k} {hook}"
                )
        checked += 1
    assert checked >= 80, f"only {checked} of 100 generated programs compiled: {refused[:10]}"
