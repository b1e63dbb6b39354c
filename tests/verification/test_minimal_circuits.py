"""Minimal faithful circuits exist for every library program under every ablation, and each is checked
faithful and irreducible independently, on the PyTorch module (the search ran on the engine)."""

from __future__ import annotations

import numpy as np
import pytest

from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.model.outputs import positions_equal
from rasp_compiler.rasp.lib import LIBRARY
from verify import causal
from verify.causal.patcher import Patcher
from verify.circuit import legal_edges
from verify.dataset import decided_positions, decode_outputs


def _setup(name: str):
    entry = LIBRARY[name]
    program = entry.builder()  # the dataset's program must be the one compiled (same op labels)
    model = compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
    return model, causal.make_dataset(model, program, 16, seed=0, distinct=entry.distinct_tokens)


def _keeps_outputs(patcher: Patcher, model, universe: list[str], keep: set[str], clean: list) -> bool:
    out = patcher.outputs([[e for e in universe if e not in keep]])[0]
    decided = decided_positions(model, out)
    numerical = model.config.output_encoding == "numerical"
    same = np.array([positions_equal(a, b, numerical) for a, b in zip(decode_outputs(model, out), clean,
                                                                        strict=True)]).reshape(decided.shape)
    return bool((same & decided).all())


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_minimal_circuit_is_faithful_and_irreducible_on_the_torch_module(name: str) -> None:
    model, data = _setup(name)
    universe = [str(e) for e in legal_edges(model.config.n_layers, model.config.n_heads)]
    for ablation in causal.ABLATIONS:
        mc = causal.minimal_circuit(model, data, ablation)
        assert mc.backend == "engine"
        torch = Patcher(model, data, ablation, backend="torch")
        clean = decode_outputs(model, torch.clean())
        keep = set(mc.edges)
        assert _keeps_outputs(torch, model, universe, keep, clean), (ablation, mc.edges)
        for e in keep:
            assert not _keeps_outputs(torch, model, universe, keep - {e}, clean), (ablation, e)
        assert set(mc.circuit.items("edge")) == keep


def test_non_monotone_necessity_is_reported_not_hidden() -> None:
    # shuffle_dyck under resample: two single-edge-necessary edges are not needed once others are gone
    mc = causal.minimal_circuit(*_setup("shuffle_dyck"), "resample")
    assert not mc.same_as_necessary and len(mc.edges) < len(mc.necessary)
    reverse = causal.minimal_circuit(*_setup("reverse"), "resample")
    assert reverse.same_as_necessary and len(reverse) == 2
