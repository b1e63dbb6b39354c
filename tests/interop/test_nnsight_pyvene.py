"""Other real clients, run unchanged on the compiled module: a node and an edge patch written in nnsight
equal the engine's; interchange interventions on the ground-truth alignment run by pyvene give the same
outputs and the same interchange accuracy as `verify.causal.interchange_accuracy`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnsight import NNsight
from support.library_models import compiled

from rasp_compiler.rasp.lib import LIBRARY
from verify import causal, interop
from verify.causal.patcher import Patcher


@pytest.fixture(scope="module")
def sort():
    model = compiled("sort")
    program = LIBRARY["sort"].builder()
    return model, causal.make_dataset(model, program, n=16, seed=0)


def test_nnsight_node_and_edge_patches_equal_the_engine(sort) -> None:
    model, data = sort
    module = model.to_torch()
    net = NNsight(module)
    tokens = torch.as_tensor(data.clean_ids)
    with torch.no_grad():
        with net.trace(tokens):  # node: zero-ablate head L1.H0
            net.blocks[1].attn.hook_result.output[:, :, 0] = 0
            node = net.output.save()
        W_Q = module.blocks[1].attn.W_Q.detach()[0]
        with net.trace(tokens):  # edge L0.MLP -> L1.H0<q>: remove L0.MLP's share of the head's query only
            mlp = net.blocks[0].hook_mlp_out.output
            net.blocks[1].attn.hook_q.output[:, :, 0] = net.blocks[1].attn.hook_q.output[:, :, 0] - mlp @ W_Q
            edge = net.output.save()
        W_in = module.blocks[1].mlp.W_in.detach()
        with net.trace(tokens):  # edge L1.H0 -> L1.MLP<in>
            head = net.blocks[1].attn.hook_result.output[:, :, 0]
            net.blocks[1].mlp.hook_pre.output = net.blocks[1].mlp.hook_pre.output - head @ W_in
            edge2 = net.output.save()
    patcher = Patcher(model, data, "zero", backend="engine")
    ref = patcher.outputs([["L1.H0"], ["L0.MLP->L1.H0<q>"], ["L1.H0->L1.MLP<in>"]])
    clean = patcher.clean()
    for got, want in zip((node, edge, edge2), ref, strict=True):
        assert np.abs(want - clean).max() > 0.5  # each patch changes the outputs
        np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-4)


def test_pyvene_interchange_equals_ours_on_every_ground_truth_variable(sort) -> None:
    model, data = sort
    alignments = causal.ground_truth_alignments(model, data.program)
    assert len(alignments) >= 4
    for name, alignment in alignments.items():
        ours = causal.interchange_accuracy(model, alignment, data)
        theirs = interop.pyvene_interchange_accuracy(model, alignment, data)
        assert theirs.backend == "pyvene"
        assert theirs.agree == ours.agree and theirs.iia == ours.iia, name
        assert theirs.n_vacuous == ours.n_vacuous, name
    # and a wrong alignment (tokens' subspace on the wrong writer) scores the same low IIA through both
    wrong = causal.Alignment("tokens", "L0.MLP", alignments["tokens"].subspace)
    ours = causal.interchange_accuracy(model, wrong, data)
    assert interop.pyvene_interchange_accuracy(model, wrong, data).iia == ours.iia < 1.0


def test_pyvene_refuses_a_head_of_a_multi_head_layer() -> None:
    model = compiled("running_max")
    assert model.config.n_heads > 1
    with pytest.raises(causal.CausalError, match="pyvene has no component for head"):
        interop.pyvene_component(model, "L1.H1")
