"""Adapters that hand compiled models and datasets to other tools, run unchanged (auto-circuit today;
TransformerLens itself is `rasp_compiler.model.export`). Version workarounds live here, never in a
user's script."""

from verify.interop.autocircuit import ALGORITHMS, AutoCircuitMethod, AutoCircuitTask, autocircuit_task

__all__ = ["ALGORITHMS", "AutoCircuitMethod", "AutoCircuitTask", "autocircuit_task"]
