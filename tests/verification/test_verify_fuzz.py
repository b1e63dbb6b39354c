"""Fuzzing circuit-discovery tools: a built-in baseline against the ablation-aware truth, a broken tool
caught and shrunk, answer forms and metrics, errors, the command line."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from rasp_compiler import rasp
from rasp_compiler.rasp.source import to_source
from rasp_compiler.testing import generate
from verify import causal, ground_truth
from verify import tool_fuzz as fuzz
from verify.circuit import legal_edges

torch.set_num_threads(1)


def _truth_from_weights(model, data):  # noqa: ANN001, ANN202
    """A correct tool: reads the circuit off the weights (independent of the annotation the harness uses)."""
    return ground_truth(model, method="weights")


def _never_reports_qk(model, data):  # noqa: ANN001, ANN202
    """A deliberately broken tool: the right edges, except that it never reports query/key inputs."""
    return {str(e) for e in _truth_from_weights(model, data).edges if e.input not in ("q", "k")}


def _n_ops(program) -> int:  # noqa: ANN001
    return sum(1 for e in rasp.topological_order(program) if e.children)


# --------------------------------------------------------------------------------------------- baseline


def test_acdc_baseline_against_the_resample_ablation_truth() -> None:
    # degenerate programs included (nondegenerate=False), so that constant outputs occur and are skipped
    s = fuzz.fuzz_tool(fuzz.baseline_tool("acdc"), programs=200, seed=0, truth="ablation", shrink=False,
                       limits={"nondegenerate": False})
    print("\n" + str(s))
    assert len(s.cases) >= 80, s.skipped
    assert all(c.metric == "f1" for c in s.cases)  # ACDC at one threshold answers with a set
    # Where the program's output depends on the input, ACDC finds exactly the edges whose single
    # resample ablation changes an output (necessary_edges: program-derived, engine-confirmed).
    assert not any(c.constant_output for c in s.cases)
    assert s.skipped["constant output"] >= 1, s.skipped
    bad = [(c.index, c.false_negatives, c.false_positives) for c in s.cases if c.f1 != 1.0]
    assert not bad, bad
    assert not s.flagged  # the baseline is not flagged
    # the default generator yields no constant output, so nothing is skipped for that reason
    acdc = fuzz.baseline_tool("acdc")
    default = fuzz.fuzz_tool(acdc, programs=20, seed=0, truth="ablation", shrink=False)
    assert default.skipped["constant output"] == 0 and len(default.cases) == 20, default.skipped
    assert default.ok
    # Programs whose output is the same on every clean and corrupted input are skipped under the ablation
    # truth (docs/FUZZING.md): ACDC rightly returns the empty (faithful) circuit there, while single-edge
    # ablations can still push activations off-distribution; the two definitions differ, nothing is wrong.


def test_ranked_answers_are_scored_by_roc_auc() -> None:
    def ranks_truth_first(model, data):  # noqa: ANN001, ANN202
        truth = {str(e) for e in ground_truth(model, method="weights").edges}
        cfg = model.config
        return {str(e): (1.0 if str(e) in truth else 0.5) for e in legal_edges(cfg.n_layers, cfg.n_heads)}

    def ranks_truth_last(model, data):  # noqa: ANN001, ANN202
        return {k: 1.5 - v for k, v in ranks_truth_first(model, data).items()}

    good = fuzz.fuzz_tool(ranks_truth_first, programs=12, seed=3, shrink=False)
    assert good.cases and all(c.metric == "roc_auc" and c.roc_auc == 1.0 for c in good.cases)
    assert not good.flagged
    assert all(c.f1 < 1.0 for c in good.cases)  # every edge scores > 0: as a set it is far too big
    worse = fuzz.fuzz_tool(ranks_truth_last, programs=12, seed=3, shrink=False)
    assert worse.flagged and all(c.roc_auc == 0.0 for c in worse.cases)
    as_f1 = fuzz.fuzz_tool(ranks_truth_first, programs=12, seed=3, metric="f1", shrink=False)
    assert as_f1.flagged


# --------------------------------------------------------------------------------------------- broken tool


def test_broken_tool_is_flagged_and_shrunk_to_a_few_ops() -> None:
    s = fuzz.fuzz_tool(_never_reports_qk, programs=40, seed=2, max_shrunk=1)
    print("\n" + str(s))
    assert s.flagged and s.worst.value < 0.9
    assert s.per_kind()["select"] < 1.0 and s.kind_table()["select"]["failing"] >= 1
    # programs without attention have no q/k edges: the broken tool is right on them
    no_attn = [c for c in s.cases if not c.kinds.get("select")]
    assert no_attn and all(c.f1 == 1.0 for c in no_attn)
    small = s.shrunk[0]
    assert small.value < s.pass_bar
    assert _n_ops(small.program) <= 3, small.source()
    assert any(isinstance(e, rasp.Select) for e in rasp.topological_order(small.program))
    assert small.false_negatives and all(e.endswith(("<q>", "<k>")) for e in small.false_negatives)
    assert not small.false_positives
    assert all(line in str(s) for line in small.source().splitlines())  # printed as RASP source
    # the shrunk program, rebuilt from its printed source, still fails the tool in the same way
    again = fuzz.fuzz_tool(
        _never_reports_qk,
        [generate.GeneratedProgram(small.program, small.vocab, small.max_seq_len)],
        shrink=False,
    )
    assert again.flagged and again.cases[0].false_negatives == small.false_negatives
    assert to_source(small.program, strict=False) == small.source()


def test_broken_tool_is_flagged_against_the_ablation_truth_too() -> None:
    s = fuzz.fuzz_tool(_never_reports_qk, programs=30, seed=0, truth="ablation", max_shrunk=1)
    assert s.flagged
    small = s.shrunk[0]
    assert _n_ops(small.program) <= 4, small.source()
    assert any(e.endswith(("<q>", "<k>")) for e in small.false_negatives)


def test_a_crashing_tool_scores_zero_with_its_error() -> None:
    def crashes(model, data):  # noqa: ANN001, ANN202
        raise RuntimeError("boom")

    s = fuzz.fuzz_tool(crashes, programs=4, seed=0, shrink=False)
    assert s.flagged and all(c.value == 0.0 and "RuntimeError: boom" in c.error for c in s.cases)
    assert f"the tool raised or gave an unscoreable answer on {len(s.cases)} program(s)" in s.report()
    assert "RuntimeError: boom" in s.report()  # in the plain report, not only in --json

    def wrong_type(model, data):  # noqa: ANN001, ANN202
        return 42

    s = fuzz.fuzz_tool(wrong_type, programs=2, seed=0, shrink=False)
    assert all("expected a verify.Circuit" in c.error for c in s.cases)


# --------------------------------------------------------------------------------------------- dataset


def test_tool_dataset_matches_the_evaluator() -> None:
    seen = []

    def records(model, data):  # noqa: ANN001, ANN202
        seen.append((model, data))
        return _truth_from_weights(model, data)

    gps = generate.sample_programs(3, 5)
    fuzz.fuzz_tool(records, gps, seed=5, n_inputs=6, shrink=False)
    assert seen
    for model, d in seen:
        assert len(d) == 6 and d.clean_ids.shape == d.corrupt_ids.shape == (6, d.length + 1)
        assert d.clean_tensor.dtype == torch.long and d.corrupt_tensor.shape == d.corrupt_ids.shape
        for xs, ids, strs, want in zip(d.clean, d.clean_ids, d.clean_str, d.expected, strict=True):
            assert strs == ["BOS"] + [str(x) for x in xs]
            assert list(ids) == model.encode(["BOS", *xs])
            assert want == rasp.evaluate(d.program, xs)
        for xs, y in zip(d.corrupt, d.corrupt_expected, strict=True):
            assert y == rasp.evaluate(d.program, xs)
        assert causal.necessary_edges(model, d, "resample").ablation == "resample"  # a causal Dataset too


# --------------------------------------------------------------------------------------------- errors, CLI


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(fuzz.ToolFuzzError, match="unknown truth"):
        fuzz.fuzz_tool(_truth_from_weights, 1, truth="weights")
    with pytest.raises(fuzz.ToolFuzzError, match="unknown metric"):
        fuzz.fuzz_tool(_truth_from_weights, 1, metric="auc")
    with pytest.raises(fuzz.ToolFuzzError, match="unknown ablation"):
        fuzz.fuzz_tool(_truth_from_weights, 1, ablation="noise")
    with pytest.raises(fuzz.ToolFuzzError, match="callable"):
        fuzz.fuzz_tool("acdc", 1)
    with pytest.raises(fuzz.ToolFuzzError, match="GeneratedProgram"):
        fuzz.fuzz_tool(_truth_from_weights, [rasp.tokens])
    with pytest.raises(fuzz.ToolFuzzError, match="limits"):
        fuzz.fuzz_tool(_truth_from_weights, 1, limits={"max_opz": 3})
    with pytest.raises(fuzz.ToolFuzzError, match="a built-in baseline, one of"):
        fuzz.load_tool("no_colon")
    with pytest.raises(fuzz.ToolFuzzError, match="cannot import module 'no_such_mod_xyz'"):
        fuzz.load_tool("no_such_mod_xyz:f")
    with pytest.raises(fuzz.ToolFuzzError, match="does not define 'nope'"):
        fuzz.load_tool("verify.tool_fuzz:nope")
    with pytest.raises(fuzz.ToolFuzzError, match="not a callable"):
        fuzz.load_tool("verify.tool_fuzz:TRUTHS")


def test_hooked_transformer_needs_the_tl_extra() -> None:
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        with pytest.raises(fuzz.ToolFuzzError, match="transformer-lens"):
            fuzz.fuzz_tool(_truth_from_weights, 1, as_hooked_transformer=True)
        return
    got = []
    fuzz.fuzz_tool(
        lambda m, d: got.append(type(m).__name__) or set(), 8, as_hooked_transformer=True, shrink=False
    )
    assert got and all(n == "HookedTransformer" for n in got)


def test_command_line(tmp_path, capsys) -> None:  # noqa: ANN001
    from rasp_compiler.app.cli import main

    tools = tmp_path / "my_tools_for_fuzz.py"
    tools.write_text(
        textwrap.dedent("""
        import verify

        def drop_qk(model, data):
            truth = verify.ground_truth(model, method="weights")
            return [str(e) for e in truth.edges if e.input not in ("q", "k")]
    """)
    )
    out = tmp_path / "summary.json"
    args = ["fuzz", "tool", "--programs", "12", "--seed", "2", "--quiet", "--json", str(out)]
    code = main([*args, "--tool", f"{tools}:drop_qk"])
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert code == 1 and "FLAGGED" in text and "op kind" in text
    assert data["flagged"] and data["n_programs"] == 12 and data["pass_bar"] == 0.999
    assert all(ln in text for ln in data["shrunk"][0]["source"].splitlines())
    assert set(data["per_kind"]["select"]) == {"programs", "mean", "worst", "failing"}
    assert main([*args, "--tool", f"{tools}:missing"]) == 1
    assert "does not define 'missing'" in capsys.readouterr().err

    s = fuzz.run_tool_campaign(6, 0, tool="acdc", progress=False, truth="ablation", shrink=False)
    assert s.tool == "acdc" and s.ok == (not s.flagged) and "acdc" in s.report()


def test_tool_campaign_same_for_any_worker_count() -> None:
    """Two spawned workers score the same programs with the same datasets as one (programs rebuilt here)."""
    one = fuzz.fuzz_tool(_truth_from_weights, 14, seed=4, n_inputs=6, shrink=False)
    two = fuzz.fuzz_tool(_truth_from_weights, 14, seed=4, n_inputs=6, shrink=False, workers=2)
    assert one.to_json() == two.to_json()
    assert one.cases and all(c.program is not None for c in two.cases)
    assert [c.source() for c in two.cases] == [c.source() for c in one.cases]  # rebuilt from (seed, i)
    assert len({c.source() for c in one.cases}) > 1
    with pytest.raises(fuzz.ToolFuzzError, match="sampled programs"):
        fuzz.fuzz_tool(_truth_from_weights, generate.sample_programs(1, 0), workers=2)


def test_flagged_edges_carry_the_truths_reason() -> None:
    """Every missed or extra edge in a report says why it is (not) in the truth, so a user need not
    rebuild the case by hand to learn it."""
    s = fuzz.fuzz_tool(_never_reports_qk, programs=30, seed=0, truth="ablation", shrink=False)
    flagged = [c for c in s.cases if c.false_negatives or c.false_positives]
    assert flagged
    for c in flagged:
        for e in [*c.false_negatives, *c.false_positives]:
            assert c.reasons.get(e), (e, c.reasons)
    missed = [c for c in flagged if c.false_negatives]
    assert missed  # the tool never reports q/k edges
    for c in missed:
        assert c.reasons[c.false_negatives[0]].startswith("needed: its single resample ablation changes")
        assert c.false_negatives[0] + ": needed" in c.describe()
