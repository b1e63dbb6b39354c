"""Ground truth of real compiled programs: the library and random programs.

* annotation-derived == weight-derived circuit for every program;
* the circuit's ops are exactly the ops the output depends on (checked against the RASP program
  itself, with the compiler's `#id` suffixes for duplicate labels stripped, and against the
  annotation's op graph);
* the circuit suffices: zeroing every head and MLP neuron outside it leaves the decoded outputs as
  they were (an independent check through the forward pass);
* every form round-trips on real circuits, and the make_sort diagram names every component.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest

import verify
from rasp_compiler import rasp
from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.rasp import lib
from rasp_compiler.testing import generate
from verify import formats as F

NAMES = sorted(lib.LIBRARY)
_CACHE: dict[str, tuple] = {}


def compiled_with_program(name: str):
    """(model, the very program it was compiled from: unnamed labels depend on creation order)."""
    if name not in _CACHE:
        e = lib.LIBRARY[name]
        program = e.builder()
        _CACHE[name] = (compiling.compile_rasp_to_model(program, e.vocab, e.max_seq_len), program)
    return _CACHE[name]


def compiled(name: str):
    return compiled_with_program(name)[0]


def _annotation_ancestors(ann: dict, output: str) -> set[str]:
    seen, stack = set(), [output]
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(ann["ops"][op]["children"])
    return seen


def _strip(label: str) -> str:
    return re.sub(r"#\d+$", "", label)


@pytest.mark.parametrize("name", NAMES)
def test_library_truth_both_ways_and_op_coverage(name: str) -> None:
    m, program = compiled_with_program(name)
    a = verify.ground_truth(m)
    w = verify.ground_truth(m, method="weights")
    assert a == w, f"{name}:\n{a.diff(w)}"
    ops = a.all_ops() - {"one"}
    assert ops == _annotation_ancestors(m.annotation_json(), a.output)
    exprs = {e.unique_id: e.label for e in rasp.topological_order(program)}
    assert Counter(_strip(op) for op in ops) == Counter(exprs.values()), name


def _pruned(model, circuit):
    """The model with every head and MLP neuron outside the circuit zeroed."""
    w = {k: v.copy() for k, v in model.weights.items()}
    c = model.config
    for layer in range(c.n_layers):
        for h in range(c.n_heads):
            if f"L{layer}.H{h}" not in circuit.nodes:
                w[f"blocks.{layer}.attn.W_O"][h] = 0.0
        keep = np.zeros(c.d_mlp, dtype=bool)
        for rng in circuit.nodes.get(f"L{layer}.MLP", {}).values():
            keep[rng[0] : rng[1]] = True
        w[f"blocks.{layer}.mlp.W_out"][~keep] = 0.0
        w[f"blocks.{layer}.mlp.W_in"][:, ~keep] = 0.0
    return dataclasses.replace(model, weights=w)


@pytest.mark.parametrize("name", NAMES)
def test_library_circuit_suffices(name: str) -> None:
    m = compiled(name)
    truth = verify.ground_truth(m)
    pruned = _pruned(m, truth)
    for example in lib.LIBRARY[name].examples:
        want = m.apply(["BOS", *example]).decoded
        got = pruned.apply(["BOS", *example]).decoded
        if m.config.output_encoding == "numerical":
            assert np.allclose(np.asarray(got[1:], float), np.asarray(want[1:], float), atol=1e-4), name
        else:
            assert got == want, name


def test_random_programs_truth_both_ways() -> None:
    n_checked = 0
    for gp in generate.sample_programs(80, seed=11):
        try:
            m = compiling.compile_rasp_to_model(gp.program, gp.vocab, gp.max_seq_len)
        except Exception:  # noqa: BLE001 - the compiler's own tests cover what it rejects
            continue
        a = verify.ground_truth(m)
        w = verify.ground_truth(m, method="weights")
        assert a == w, a.diff(w)
        # nothing outside what the output depends on (a constant op may drop out, never the reverse)
        assert a.all_ops() - {"one"} <= _annotation_ancestors(m.annotation_json(), a.output)
        n_checked += 1
    assert n_checked >= 20


@pytest.mark.parametrize("name", ["sort", "shuffle_dyck2", "first_occurrence"])
def test_library_forms_round_trip(name: str) -> None:
    m = compiled(name)
    truth = verify.ground_truth(m)
    g = truth.model_graph
    cases = {
        "json": F.from_json(F.to_json(truth), m),
        "tl": F.from_tl_hooks(F.to_tl_hooks(truth), g),
        "acdc": F.from_acdc(F.to_acdc(truth), g),
        "acdc_resid_pre": F.from_acdc(F.to_acdc(truth, use_pos_embed=False), g),
        "autocircuit": F.from_autocircuit(F.to_autocircuit(truth), g),
        "autocircuit_scores": F.from_autocircuit_scores(F.to_autocircuit_scores(truth), g, threshold=0.5),
        "eapig": F.from_eapig(F.to_eapig(truth), g),
        "eapig_json": F.from_eapig_json(F.to_eapig_json(truth), g),
    }
    for form, back in cases.items():
        assert back == truth, f"{name} via {form}:\n{truth.diff(back)}"
    r = verify.score(F.from_eapig(F.to_eapig(truth), m), truth, level="subspace")
    assert (r.precision, r.recall) == (1.0, 1.0)


def test_make_sort_diagram_names_every_component(tmp_path) -> None:
    m = compiled("sort")
    truth = verify.ground_truth(m)
    path = verify.draw_circuit(truth, tmp_path / "sort.svg", heads_per_layer=m.config.heads_per_layer)
    svg = path.read_text()
    texts = set(re.findall(r"<text[^>]*>([^<]*)</text>", svg))
    texts |= set(re.findall(r"<!-- ([^>]*?) -->", svg))
    for node in truth.node_names(include_output=True):
        assert any(node == t.strip() for t in texts), f"{node} missing from the diagram"
    for op in truth.ops():  # RASP ops and the selectors folded into heads
        assert any(op in t for t in texts), f"op {op} missing from the diagram"
    png = verify.draw_circuit(truth, tmp_path / "sort.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
