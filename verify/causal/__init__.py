"""Causal checks of circuits: faithfulness by ablation, ablation-aware truth, interchange interventions.

The structural truth (`verify.ground_truth`) says which edges *carry* information to the output. Which
edges a circuit *needs* depends on how the rest is ablated and on the dataset: an edge that carries
`length` is not needed under resample ablation when every clean/corrupt pair has the same length.
This module makes that exact:

* `make_dataset`: clean inputs and independently resampled corrupted inputs (same length, so that
  position-wise patching is defined), with the evaluator's outputs; deterministic by seed.
* `faithfulness`: run with every edge outside a circuit ablated (each reader input sees, from each
  writer outside the circuit, the writer's ablated value instead of its current one): task accuracy
  (decoded output == `rasp.evaluate`) and a metric ratio against the full model; completeness
  (ablate the circuit, keep the rest) and minimality (per circuit edge, the effect of also removing it).
* `necessary_edges`: the edges whose single ablation changes some output, derived from the program
  (an edge carries RASP variables into a reader op; ablating it = giving that reader, and only it,
  those variables' ablated values; evaluate) and confirmed on the engine, with a reason for every
  edge where it differs from the structural truth.
* `minimal_circuit`: an irreducible faithful circuit (every output kept with the rest ablated, no edge
  removable), found by backward elimination on the engine and re-checked.
* `interchange_accuracy`: patch a variable's subspace from a source run into a base run, apply the
  same intervention in the evaluator, count agreeing outputs.

Ablations: "resample" (writer's output on the corrupted input), "mean" (its per-position mean over
the clean inputs), "zero". Resample runs on the C++ engine; mean and zero run on the engine when it
accepts `source_outputs` (docs/CONTRACTS.md "Requests to the engine"), else on the PyTorch hook
reference (`rasp_compiler.model.patching`).
"""

from verify.causal.faithfulness import FaithfulnessResult, faithfulness
from verify.causal.interchange import Alignment, IIAResult, ground_truth_alignments, interchange_accuracy
from verify.causal.minimal import MinimalCircuit, minimal_circuit
from verify.causal.necessary import NecessaryEdges, necessary_edges
from verify.causal.patcher import Patcher
from verify.dataset import ABLATIONS, CausalError, Dataset, MixedDataset, decode_outputs, make_dataset

__all__ = [
    "ABLATIONS",
    "Alignment",
    "CausalError",
    "Dataset",
    "FaithfulnessResult",
    "IIAResult",
    "MinimalCircuit",
    "MixedDataset",
    "NecessaryEdges",
    "Patcher",
    "decode_outputs",
    "faithfulness",
    "ground_truth_alignments",
    "interchange_accuracy",
    "make_dataset",
    "minimal_circuit",
    "necessary_edges",
]
