"""Language layer: the RASP language (tracr's names and meaning), its library, and programs as source.

`from rasp_compiler import rasp` gives tracr's `rasp` API (`rasp.Map`, `rasp.evaluate`, ...); the
definitions live in `rasp_compiler.rasp.rasp`, so `from rasp_compiler.rasp import rasp` (tracr's own
import path) works too. Submodules: `lib` (the program library), `source` (programs <-> Python source).
Nothing here imports another layer of the package.
"""

from rasp_compiler.rasp.rasp import *  # noqa: F403 - this package *is* the language's public face
from rasp_compiler.rasp.rasp import __all__  # noqa: F401
