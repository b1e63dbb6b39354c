"""`python -m rasp_compiler ...` runs the `rasp-compiler` command."""

import sys

from rasp_compiler.app.cli import main

sys.exit(main())
