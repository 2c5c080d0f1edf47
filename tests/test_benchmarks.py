"""The benchmark scripts run (tiny sizes, one or two steps) and print well-formed JSON lines;
their numbers are measured by hand (docs/benchmarks.md), not asserted here."""
import importlib.util
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
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
    # traced op time summed over XLA's threads / wall time: up to ~#threads when ops run
    # concurrently (1.51 seen under xdist on 2 cores), far below 0.5 if ops were missed
    threads = os.cpu_count() or 1
    assert summary["step_time_s"] > 0 and 0.5 < summary["traced_share"] < threads + 0.5
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
    assert _script("peer_torch").main(["--sizes", "tiny", "--steps", "1",
                                       "--matmul-n", "128"]) == 0
    row, peaks = _lines(capsys)
    assert row["bench"] == "peer_torch" and row["params"] == 1442432   # kyx's tiny dims
    assert row["tokens_per_s"] > 0 and row["batch"] * row["seq_len"] == 16 * 128
    assert peaks["bench"] == "matmul_peak" and peaks["torch_flops"] > 0 < peaks["xla_flops"]


def test_memory_reports_sharded_state_and_compiled_bytes(capsys):
    """tiny on the 8-device mesh, all on fsdp: the sharded state is 1/8 per device under
    `fsdp` and whole under `dp`, and XLA's argument bytes are exactly params + optimizer
    state + batch + step counter and RNG key."""
    memory = _script("memory")
    for rules in ("fsdp", "dp"):
        assert memory.main(["--configs", "pretrain.py:tiny", "--mesh", "fsdp=8",
                            "--rules", rules]) == 0
    fsdp, dp = _lines(capsys)
    for row in (fsdp, dp):
        assert row["bench"] == "memory" and row["devices"] == 8
        assert row["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1}
        assert row["params_bytes_total"] == 4 * row["params"] == 4 * 1442432   # float32
        assert row["argument_bytes"] == (row["params_bytes_per_device"]
                                         + row["opt_state_bytes_per_device"]
                                         + row["batch_bytes_per_device"] + 4 + 8)
        assert row["temp_bytes"] > 0 and row["compile_s"] > 0
        assert row["alias_bytes"] >= row["params_bytes_per_device"]   # donated state
        assert row["total_bytes"] == (row["argument_bytes"] + row["output_bytes"]
                                      - row["alias_bytes"] + row["temp_bytes"]
                                      + row["generated_code_bytes"])
    assert (fsdp["rules"], dp["rules"]) == ("fsdp", "dp")
    assert fsdp["params_bytes_per_device"] * 8 == fsdp["params_bytes_total"]
    assert dp["params_bytes_per_device"] == dp["params_bytes_total"]
    counts = dp["opt_state_bytes_per_device"] - 2 * dp["params_bytes_total"]  # beside m, v
    assert 0 < counts <= 16 and counts % 4 == 0                                 # int32 counts
    assert fsdp["batch_bytes_per_device"] == dp["batch_bytes_per_device"] == 16 * 128 * 4 * 5 // 8


def test_memory_flags_are_checked():
    from kyx.errors import ConfigError

    train_step = _script("train_step")
    assert train_step.mesh_overrides("data=2,fsdp=4") == [
        "mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1", "mesh.expert=1"]
    for bad in ("data2", "model=8", "fsdp=x"):
        with pytest.raises(ConfigError, match="mesh"):
            train_step.mesh_overrides(bad)


def test_fit_mesh_keeps_the_preset_axes_the_devices_allow():
    fit = _script("train_step").fit_mesh
    moe = {"data": 1, "fsdp": -1, "tensor": 1, "expert": 8}
    assert fit(moe, 8) == {"data": 1, "fsdp": 1, "tensor": 1, "expert": 8}
    assert fit(moe, 4) == {"data": 1, "fsdp": 1, "tensor": 1, "expert": 4}
    assert fit(moe, 32) == {"data": 1, "fsdp": 4, "tensor": 1, "expert": 8}
    assert fit({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}, 1)["data"] == 1
    assert fit({"data": 2, "fsdp": 1, "tensor": 1, "expert": 1}, 8) == {
        "data": 2, "fsdp": 4, "tensor": 1, "expert": 1}   # no -1 axis: the rest on fsdp


def test_accelerator_cpu_form_runs_the_train_step(capsys):
    """On CPU the 1b preset runs scaled down on the 8 simulated devices (its fsdp mesh),
    through the real step, with MFU against the measured matmul peak."""
    accelerator = _script("accelerator")
    assert accelerator.main(["--steps", "2"]) == 0
    (row,) = _lines(capsys)
    assert row["bench"] == "accelerator" and row["config"] == "pretrain.py:1b"
    assert row["scaled_down"] is True and "scaled-down" in row["note"]
    assert row["device_kind"] == "cpu" and row["device_count"] == 8
    assert row["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1}
    assert row["batch"] == 8 and row["seq_len"] == 128 and row["dtype"] == "bfloat16"
    assert row["tokens_per_s"] > 0 and row["step_time_s"] > 0 and row["compile_s"] > 0
    assert row["tokens_per_s_per_device"] * 8 == pytest.approx(row["tokens_per_s"])
    assert row["mfu"] is None or 0 < row["mfu"] < 1
    assert row["peak_memory_bytes"] > 0 and row["memory_source"]
    assert abs(row["loss"] - math.log(1024)) < 0.5   # random tokens, fresh init


@pytest.mark.parametrize("kind,chip", [
    ("TPU v4", "TPU v4"), ("TPU v5 lite", "TPU v5e"), ("TPU v5e", "TPU v5e"),
    ("TPU v5", "TPU v5p"), ("TPU v5p", "TPU v5p"), ("TPU v6 lite", "TPU v6e"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100-PCIE-40GB", "A100"),
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA B200", "B200"),
    ("TPU v4 lite", None), ("cpu", None), ("NVIDIA GeForce RTX 4090", None)])
def test_datasheet_peak_matches_jax_device_kinds(kind, chip):
    from kyx.telemetry import datasheet_peak

    found = datasheet_peak(kind)
    assert (found[0] if found else None) == chip
    if found:
        assert 1e14 < found[1] < 3e15


def test_linear_decode_reports_the_pla_state_size_of_the_docs(capsys):
    """benchmarks/linear_decode.py runs and its PLA cache is docs/linear_attention.md's
    4 * H * P * (D + 1) bytes per layer and row (H 4, D 8, F 16: P 273), whatever the
    context."""
    _script("linear_decode").main(["--kinds", "pla", "--contexts", "16", "--tokens", "4",
                                   "--repeats", "1", "--batch", "2", "--d-model", "32",
                                   "--vocab", "64"])
    (row,) = _lines(capsys)
    assert row["cache_bytes_per_row_layer"] == 4 * 4 * 273 * (8 + 1)
    assert row["prefill_s"] > 0 and row["context"] == 16
