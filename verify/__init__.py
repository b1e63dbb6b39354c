"""verify: ground-truth circuits of compiled models and the checks that score discovered circuits.

`ground_truth(model)` gives the `Circuit` of the model's output (from the annotation or from the
weights), `formats` reads and writes the circuit forms of ACDC, auto-circuit, EAP-IG and
TransformerLens, and `score(discovered, truth)` measures a discovered circuit against the truth.
"""

from verify import formats
from verify.circuit import LEVELS, Circuit, CircuitError, Edge, ModelGraph, Part, legal_edges, model_nodes
from verify.dead import DeadEdges, dead_edges
from verify.draw import draw_circuit
from verify.formats import from_edges, from_nodes
from verify.structural import ScoreResult, roc_auc, roc_curve, score
from verify.tool_fuzz import fuzz_tool
from verify.truth import TOL, ground_truth, model_graph

__all__ = [
    "LEVELS",
    "TOL",
    "Circuit",
    "CircuitError",
    "DeadEdges",
    "Edge",
    "ModelGraph",
    "Part",
    "ScoreResult",
    "dead_edges",
    "draw_circuit",
    "formats",
    "from_edges",
    "from_nodes",
    "fuzz_tool",
    "ground_truth",
    "legal_edges",
    "model_graph",
    "model_nodes",
    "roc_auc",
    "roc_curve",
    "score",
]
