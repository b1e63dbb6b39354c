"""Adapters that hand compiled models and datasets to other tools, run unchanged: auto-circuit
(`autocircuit`), pyvene (`pyvene_iia`), SAE-Lens (`saelens`: its own training loop on our activations);
nnsight needs none (`NNsight(model.to_torch())`), TransformerLens is `rasp_compiler.model.export`.
Version workarounds live here, never in a user's script. The peers are imported only when an adapter
is called."""

from verify.interop.autocircuit import ALGORITHMS, AutoCircuitMethod, AutoCircuitTask, autocircuit_task
from verify.interop.pyvene_iia import (
    DASResult,
    das_alignment,
    pyvene_component,
    pyvene_interchange_accuracy,
    pyvene_model,
)

__all__ = [
    "ALGORITHMS",
    "AutoCircuitMethod",
    "AutoCircuitTask",
    "autocircuit_task",
    "DASResult",
    "das_alignment",
    "pyvene_component",
    "pyvene_interchange_accuracy",
    "pyvene_model",
]
