"""The benchmark scripts run (tiny sizes, one or two steps) and print well-formed JSON lines;
their numbers are measured by hand (docs/benchmarks.md), not asserted here."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]


def test_profile_step_attributes_the_step_to_modules(capsys):
    profile = _script("profile_step")
    assert profile.main(["--config", "configs/pretrain.py:tiny", "--steps", "1",
                         "--top", "40"]) == 0
    rows = _lines(capsys)
    summary = [r for r in rows if r["bench"] == "profile_summary"][0]
    assert summary["step_time_s"] > 0 and 0.5 < summary["traced_share"] < 1.5
    ops = [r for r in rows if r["bench"] == "profile_op"]
    modules = {r["module"] for r in ops}
    assert {"Decoder/layers/mlp", "Decoder/layers/attn", "Decoder/head"} <= modules
    head = [r for r in ops if r["module"] == "Decoder/head" and "dot_general" in r["op"]][0]
    assert head["forward_ms"] > 0 and head["backward_ms"] > 0   # both passes attributed
    kinds = {r["kind"]: r["ms_per_step"] for r in rows if r["bench"] == "profile_kind"}
    assert kinds["matmul"] > 0 and kinds["optimizer"] > 0


def test_clean_op_name_splits_phase_module_and_op():
    profile = _script("profile_step")
    assert profile.clean_op_name(
        "jit(step)/transpose(jvp(Decoder))/while/body/closed_call/layers/mlp/btd,df->btf/dot_general"
    ) == ("backward", "Decoder/layers/mlp", "btd,df->btf/dot_general")
    assert profile.clean_op_name("jit(step)/jvp()/log") == ("forward", "(loss)", "log")
    assert profile.clean_op_name("jit(step)/sqrt")[0] == "optimizer"


def test_peer_torch_step_runs(capsys):
    pytest.importorskip("transformers")
    assert _script("peer_torch").main(["--sizes", "tiny", "--steps", "1"]) == 0
    row = _lines(capsys)[0]
    assert row["bench"] == "peer_torch" and row["params"] == 1442432   # kyx's tiny dims
    assert row["tokens_per_s"] > 0 and row["batch"] * row["seq_len"] == 16 * 128
