"""Structural-truth edges that carry exactly nothing on any input are found, explained, and left out of
the truth a tool is fuzzed against; the two derivations of the structural truth still agree."""

from __future__ import annotations

import numpy as np
import pytest

import verify
from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.rasp.lib import LIBRARY
from rasp_compiler.testing.fuzz import program_for
from verify.tool_fuzz import truth_with_reasons

# generated programs (degenerate ones included, as the generator drew them then) with a dead edge
DEAD = {4: {"L2.H0->output<in>"}, 22: {"L3.H0->L3.MLP<in>", "L3.MLP->output<in>"}}


@pytest.mark.parametrize("index", sorted(DEAD))
def test_dead_edges_are_found_and_really_carry_nothing(index: int) -> None:
    gp = program_for(0, index, {"nondegenerate": False})
    model = compile_rasp_to_model(gp.program, set(gp.vocab), gp.max_seq_len)
    truth = verify.ground_truth(model)
    assert truth == verify.ground_truth(model, method="weights")  # both derivations still agree
    dead = verify.dead_edges(model)
    assert dead.exhaustive and set(dead.edges) == DEAD[index]
    assert all(reason.startswith("dead:") for reason in dead.edges.values())
    assert set(dead.live(truth).items("edge")) == set(truth.items("edge")) - DEAD[index]
    # independently: ablating every dead edge at once changes no output on any input (zero ablation)
    from verify import causal
    from verify.causal.patcher import Patcher

    data = causal.make_dataset(model, gp.program, 32, seed=1, length=max(gp.lengths))
    patcher = Patcher(model, data, "zero", backend="torch")
    out = patcher.outputs([sorted(DEAD[index])])[0]
    np.testing.assert_allclose(out, patcher.clean(), atol=1e-6)
    circuit, reasons = truth_with_reasons(model, data, "structural")
    assert not (set(circuit.items("edge")) & DEAD[index])
    assert all(reasons[e].startswith("dead:") for e in DEAD[index])


def test_no_library_program_has_a_dead_edge_and_large_spaces_claim_nothing() -> None:
    for name, entry in LIBRARY.items():
        model = compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len)
        assert verify.dead_edges(model).edges == {}, name
    big = compile_rasp_to_model(LIBRARY["sort"].builder(), set(range(12)), 8)
    claim = verify.dead_edges(big)
    assert not claim.exhaustive and claim.edges == {}
