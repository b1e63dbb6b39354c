"""Model layer: what a compiled model is.

Config and the one list of weight shapes (`config`), the token codec (`codec`), token values
(`values`), the typed ground-truth annotation (`annotation`), output blocks, decoding and the one
output-equality rule (`outputs`), files (`io`), the model object with its numpy forward
(`compiled`), the hooked PyTorch module (`torch_model`) and the TransformerLens export (`export`).
The compiler, one layer up, produces these objects; nothing here imports it.
"""

from rasp_compiler.model.codec import Codec
from rasp_compiler.model.compiled import ApplyOutput, CompiledModel, load, output_view, save
from rasp_compiler.model.config import ModelConfig, expected_weight_shapes
from rasp_compiler.model.errors import ModelError
from rasp_compiler.model.io import ModelFileError
from rasp_compiler.model.values import sort_values, value_sort_key

__all__ = [
    "ApplyOutput",
    "Codec",
    "CompiledModel",
    "ModelConfig",
    "ModelError",
    "ModelFileError",
    "expected_weight_shapes",
    "load",
    "output_view",
    "save",
    "sort_values",
    "value_sort_key",
]
