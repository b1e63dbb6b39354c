"""Distributed alignment search through pyvene, scored by the truth: on sort, the learned rotation for
`target_pos` reaches full held-out interchange accuracy, and its subspace is compared with the true one
by principal angles (close in most directions, not identical: IIA alone does not pin the subspace)."""

from __future__ import annotations

from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.rasp.lib import LIBRARY
from verify import causal, interop


def test_das_through_pyvene_against_the_true_subspace() -> None:
    entry = LIBRARY["sort"]
    program = entry.builder()
    model = compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
    alignment = causal.ground_truth_alignments(model, program)["target_pos"]
    train = causal.make_dataset(model, program, 256, seed=0)
    test = causal.make_dataset(model, program, 128, seed=1)
    assert causal.interchange_accuracy(model, alignment, test).iia == 1.0  # the truth itself
    das = interop.das_alignment(model, alignment, train, test)
    assert das.iia.backend == "pyvene-das" and das.iia.iia >= 0.95, das.iia.iia
    assert len(das.principal_cosines) == len(alignment.subspace)
    assert max(das.principal_cosines) > 0.8  # the learned subspace overlaps the true one
    assert das.basis.shape == (model.config.d_model, len(alignment.subspace))
