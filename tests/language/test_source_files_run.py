"""Every program's printed source runs on its own, as a file (what suites write as program.py), and
rebuilds a program that evaluates like the original."""

import itertools
import subprocess
import sys

import pytest

from rasp_compiler import rasp
from rasp_compiler.rasp import lib
from rasp_compiler.rasp.source import to_source
from rasp_compiler.testing import generate


def _jsonish(values: list) -> list:
    return [list(v) if isinstance(v, tuple) else v for v in values]


def _run_as_file(tmp_path, source: str, inputs: list[list]) -> list:
    path = tmp_path / "program.py"
    path.write_text(source + "\n\nimport json, sys\n"
                    "print(json.dumps([rasp.evaluate(program, x) for x in json.loads(sys.argv[1])]))\n")
    import json

    res = subprocess.run([sys.executable, str(path), json.dumps(inputs)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("name", sorted(lib.LIBRARY))
def test_library_program_sources_run_as_files(tmp_path, name: str) -> None:
    entry = lib.LIBRARY[name]
    program = entry.builder()
    vocab = sorted(entry.vocab, key=repr)
    inputs = [list(x) for n in (1, 2, 3) for x in itertools.islice(itertools.product(vocab, repeat=n), 6)]
    if entry.distinct_tokens:
        inputs = [x for x in inputs if len(set(x)) == len(x)]
    want = []
    for x in inputs:
        want.append(rasp.evaluate(program, x))
    got = _run_as_file(tmp_path, to_source(program), inputs)
    assert got == [_jsonish(w) for w in want]


def test_generated_program_sources_run_as_files(tmp_path) -> None:
    for gp in generate.sample_programs(20, 7):
        inputs = generate.sample_inputs(gp, 4, 0)
        want = [_jsonish(rasp.evaluate(gp.program, x)) for x in inputs]
        assert _run_as_file(tmp_path, to_source(gp.program), inputs) == want
