"""Export: plan file round trip, compressed-tensors checked by the real package, ModelOpt, warnings, CLI."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from hwsearch.cli import app
from hwsearch.errors import HwsearchError
from hwsearch.export import export, formats
from hwsearch.export.compressed_tensors import quantization_config
from hwsearch.export.modelopt import quant_config
from hwsearch.export.plan_view import PlanView
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.plan import Figure, LayerChoice, MergePlan, Plan, Provenance

MODEL = "digits_vit"  # 4 blocks, 128 wide: every int4 group size fits


def mixed_plan(**extra) -> Plan:
    layers = {
        "blocks.0.attn.qkv": LayerChoice(format="int8"),
        "blocks.0.mlp.fc1": LayerChoice(format="int4", group_size=64),
        "blocks.1.mlp.fc1": LayerChoice(format="int4", group_size=64),
        "blocks.1.mlp.fc2": LayerChoice(format="int4", group_size=32),
        "blocks.2.attn.proj": LayerChoice(format="fp8"),
    }
    layers.update(extra.pop("layers", {}))
    return Plan(model=MODEL, device="orin", layers=layers, **extra)


def tiny_model(prefix: str = "model") -> nn.Module:
    """A torch module tree whose linears carry the catalogue names, nested under `prefix`."""
    root = nn.Module()
    inner = nn.Module()
    root.add_module(prefix, inner)
    for layer in get_model(MODEL).layers:
        *path, leaf = layer.name.split(".")
        node = inner
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.add_module(leaf, nn.Linear(layer.K, layer.N))
    return root


# --- the plan file ------------------------------------------------------------------------------


def test_plan_file_round_trips(tmp_path: Path) -> None:
    prov = Provenance(source="predictor", device="orin", predictor_id="7", kind="xgb")
    plan = mixed_plan(merge=MergePlan(r=2, start_block=1),
                      predicted={"latency_ms": Figure(value=1.5, unit="ms", provenance=prov)})
    result = export(plan, "plan", tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text()
    assert Plan.model_validate_json(text) == plan
    assert Plan.from_json(text) == plan
    assert result.plan_path == result.path and result.warnings == ()
    assert json.loads(text)["schema"] == "hwsearch.plan/v2"


def test_every_export_keeps_the_full_plan_beside_it(tmp_path: Path) -> None:
    plan = mixed_plan(layers={"blocks.3.mlp.fc1": LayerChoice(format="int8", rank=16)})
    for fmt, name in (("compressed-tensors", "q.json"), ("modelopt", "q.yaml")):
        result = export(plan, fmt, tmp_path / fmt / name)
        assert result.plan_path == tmp_path / fmt / "q.plan.json"
        assert Plan.model_validate_json(result.plan_path.read_text()) == plan
        assert all(str(result.plan_path) in w for w in result.warnings)


# --- compressed-tensors, checked by the real package --------------------------------------------


def test_compressed_tensors_config_is_accepted_by_the_package(tmp_path: Path) -> None:
    from compressed_tensors.quantization import QuantizationConfig

    result = export(mixed_plan(), "compressed-tensors", tmp_path / "q.json")
    doc = json.loads(result.path.read_text())
    config = QuantizationConfig.model_validate(doc)
    assert config.quant_method == "compressed-tensors"
    assert config.format == "mixed-precision"
    schemes = {s.format: s for s in config.config_groups.values()}
    assert set(schemes) == {"int-quantized", "pack-quantized", "float-quantized"}
    # int4 has two group sizes: two pack-quantized groups.
    assert len(config.config_groups) == 4

    w8 = schemes["int-quantized"]
    assert (w8.weights.num_bits, w8.weights.type, w8.weights.strategy, w8.weights.symmetric) == (8, "int", "channel", True)
    ia = w8.input_activations
    assert (ia.num_bits, ia.strategy, ia.dynamic, ia.symmetric) == (8, "token", True, True)
    fp8 = schemes["float-quantized"]
    assert (fp8.weights.type, fp8.weights.strategy, fp8.input_activations.type, fp8.input_activations.strategy) == (
        "float", "channel", "float", "token")
    w4 = [s for s in config.config_groups.values() if s.format == "pack-quantized"]
    assert sorted(s.weights.group_size for s in w4) == [32, 64]
    assert all(s.weights.symmetric is False and s.input_activations is None for s in w4)
    # Every other linear of the model is ignored.
    assert len(config.ignore) == len(get_model(MODEL).layers) - 5


def test_compressed_tensors_targets_match_the_real_modules() -> None:
    """The package's own matcher applies each scheme to exactly the planned modules, under a prefix."""
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    plan = mixed_plan()
    doc, _ = quantization_config(PlanView.of(plan))
    for prefix in ("model", "backbone"):
        model = tiny_model(prefix)
        apply_quantization_config(model, QuantizationConfig.model_validate(doc), show_progress=False)
        got = {}
        for name, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is not None:
                got[name.removeprefix(prefix + ".")] = (scheme.weights.num_bits, scheme.weights.type,
                                                        scheme.weights.group_size)
        want = {n: ({"int8": 8, "int4": 4, "fp8": 8}[c.format], "float" if c.format == "fp8" else "int", c.group_size)
                for n, c in plan.layers.items()}
        assert got == want


def test_compressed_tensors_single_format_and_no_warnings() -> None:
    from compressed_tensors.quantization import QuantizationConfig

    plan = Plan(model=MODEL, layers={f"blocks.{i}.mlp.fc1": LayerChoice(format="fp8") for i in range(4)})
    doc, warnings = quantization_config(PlanView.of(plan))
    assert warnings == []
    config = QuantizationConfig.model_validate(doc)
    assert config.format == "float-quantized" and len(config.config_groups) == 1
    assert "sparsity_config" not in doc


def test_compressed_tensors_24_sparsity_uses_its_sparsity_config(tmp_path: Path) -> None:
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.quantization import QuantizationConfig

    plan = mixed_plan(layers={"blocks.0.mlp.fc1": LayerChoice(format="int4", group_size=64, sparsity="2:4"),
                              "blocks.3.mlp.fc2": LayerChoice(format="fp32", sparsity="2:4")})
    result = export(plan, "compressed-tensors", tmp_path / "q.json")
    doc = json.loads(result.path.read_text())
    QuantizationConfig.model_validate(doc)
    sparsity = doc["sparsity_config"]
    sparse = SparsityCompressionConfig.load_from_registry(sparsity["format"], **sparsity)
    assert sparse.format == "sparse-24-bitmask" and sparse.sparsity_structure == "2:4"
    assert len(sparse.targets) == 2 and 0 < sparse.global_sparsity < 0.5
    assert [w for w in result.warnings if "2:4" in w and "sparse-24-bitmask" in w]
    assert not [w for w in result.warnings if "cannot express 2:4" in w]


# --- ModelOpt ------------------------------------------------------------------------------------


def test_modelopt_config_shape_and_yaml_round_trip(tmp_path: Path) -> None:
    plan = mixed_plan()
    config, _ = quant_config(PlanView.of(plan))
    assert config["algorithm"] == "max"
    entries = config["quant_cfg"]
    assert entries[0] == {"quantizer_name": "*", "enable": False}
    by_name = {e["quantizer_name"]: e["cfg"] for e in entries[1:]}
    assert by_name["blocks.0.attn.qkv.weight_quantizer"] == {"num_bits": 8, "axis": 0}
    assert by_name["*.blocks.0.attn.qkv.input_quantizer"] == {
        "num_bits": 8, "axis": None, "type": "dynamic", "block_sizes": {-1: None}}
    assert by_name["blocks.2.attn.proj.weight_quantizer"] == {"num_bits": (4, 3), "axis": 0}
    assert by_name["blocks.1.mlp.fc2.weight_quantizer"] == {"num_bits": 4, "block_sizes": {-1: 32, "type": "static"}}
    assert "blocks.1.mlp.fc2.input_quantizer" not in by_name  # W4A16: inputs stay off

    result = export(plan, "modelopt", tmp_path / "q.yaml")
    loaded = yaml.safe_load(result.path.read_text())
    assert loaded["quant_cfg"][1:] == [
        {**e, "cfg": {**e["cfg"], **({"num_bits": list(e["cfg"]["num_bits"])} if isinstance(e["cfg"]["num_bits"], tuple) else {})}}
        for e in entries[1:]
    ]
    assert loaded["quant_cfg"][0] == entries[0] and loaded["algorithm"] == "max"


def awq_plan(**layers: LayerChoice) -> Plan:
    awq = LayerChoice(format="int4", group_size=64, scaling="awq")
    return Plan(model=MODEL, layers={"blocks.0.mlp.fc1": awq, "blocks.1.mlp.fc1": awq, **layers})


def test_compressed_tensors_writes_awq_layers_as_prescaled_w4a16_and_says_so(tmp_path: Path) -> None:
    from compressed_tensors.quantization import QuantizationConfig

    plan = awq_plan(**{"blocks.2.mlp.fc1": LayerChoice(format="int4", group_size=64)})
    with pytest.warns(UserWarning, match="has no AWQ field"):
        result = export(plan, "compressed-tensors", tmp_path / "q.json")
    config = QuantizationConfig.model_validate(json.loads(result.path.read_text()))
    (group,) = config.config_groups.values()  # AWQ and plain int4 g64 are one W4A16_ASYM group
    assert (group.weights.num_bits, group.weights.group_size, group.weights.symmetric) == (4, 64, False)
    assert len(group.targets) == 3
    (line,) = [w for w in result.warnings if "AWQ" in w]
    assert "blocks.0.mlp.fc1, blocks.1.mlp.fc1" in line and "blocks.2" not in line and "folded into the preceding" in line
    assert Plan.from_json(result.plan_path.read_text()) == plan  # the scaling is kept in the plan file


def test_modelopt_awq_lite_when_every_quantised_layer_is_awq(tmp_path: Path) -> None:
    config, lost = quant_config(PlanView.of(awq_plan()))
    assert config["algorithm"] == {"method": "awq_lite", "alpha_step": 0.1}
    assert any("awq_lite computes its own AWQ scales" in w for w in lost)
    loaded = yaml.safe_load(export(awq_plan(), "modelopt", tmp_path / "q.yaml").path.read_text())
    assert loaded["algorithm"] == {"method": "awq_lite", "alpha_step": 0.1}
    mixed, lost = quant_config(PlanView.of(awq_plan(**{"blocks.0.attn.qkv": LayerChoice(format="int8")})))
    assert mixed["algorithm"] == "max"
    assert any("one calibration algorithm per config" in w and "blocks.0.mlp.fc1" in w for w in lost)
    assert quant_config(PlanView.of(mixed_plan()))[0]["algorithm"] == "max"  # no AWQ: nothing said about it
    assert not any("AWQ" in w for w in quant_config(PlanView.of(mixed_plan()))[1])


def test_modelopt_patterns_hit_exactly_the_planned_quantizers() -> None:
    plan = mixed_plan()
    config, _ = quant_config(PlanView.of(plan))
    for prefix in ("", "model."):
        quantizers = [f"{prefix}{name}.{q}" for name, m in tiny_model("x").x.named_modules()
                      if isinstance(m, nn.Linear) for q in ("weight_quantizer", "input_quantizer")]
        enabled = {q for q in quantizers
                   if any(fnmatch.fnmatch(q, e["quantizer_name"]) for e in config["quant_cfg"][1:])}
        want = {f"{prefix}{n}.weight_quantizer" for n in plan.layers} | {
            f"{prefix}{n}.input_quantizer" for n, c in plan.layers.items() if c.format != "int4"}
        assert enabled == want


def test_modelopt_needs_yaml(tmp_path: Path) -> None:
    with pytest.raises(HwsearchError, match=r"accepted: --out ending in \.yaml or \.yml"):
        export(mixed_plan(), "modelopt", tmp_path / "q.json")
    assert list(tmp_path.iterdir()) == []


# --- warnings for what a target cannot express -----------------------------------------------------


def lossy_plan() -> Plan:
    return mixed_plan(
        layers={
            "blocks.0.mlp.fc2": LayerChoice(format="int8", sparsity="1:4"),
            "blocks.1.attn.qkv": LayerChoice(format="fp32", sparsity="4:8"),
            "blocks.2.mlp.fc1": LayerChoice(format="fp8", sparsity="2:4"),
            "blocks.3.mlp.fc1": LayerChoice(format="int8", rank=32),
            "head": LayerChoice(format="bf16"),
        },
        merge=[0, 2, 2, 2],
    )


@pytest.mark.parametrize("fmt,target", [("compressed-tensors", "compressed-tensors"), ("modelopt", "ModelOpt")])
def test_each_inexpressible_knob_is_one_warning(tmp_path: Path, fmt: str, target: str) -> None:
    out = tmp_path / ("q.json" if fmt == "compressed-tensors" else "q.yaml")
    warnings = export(lossy_plan(), fmt, out).warnings
    assert all("\n" not in w for w in warnings)

    def one(*needles: str) -> str:
        hits = [w for w in warnings if all(n in w for n in needles)]
        assert len(hits) == 1, (needles, warnings)
        return hits[0]

    one(target, "1:4", "blocks.0.mlp.fc2")
    one(target, "4:8", "blocks.1.attn.qkv")
    one(target, "low-rank", "blocks.3.mlp.fc1 r32")
    one(target, "token-merge", "0,2,2,2")
    one(target, "float dtype", "head bf16", "fp32")
    if fmt == "modelopt":
        one("ModelOpt cannot express 2:4", "blocks.2.mlp.fc1")
        one("symmetric", "blocks.0.mlp.fc1")
        assert len(warnings) == 7
    else:
        one("2:4", "sparse-24-bitmask", "blocks.2.mlp.fc1")
        assert len(warnings) == 6


def test_merge_plan_with_delayed_onset_is_warned(tmp_path: Path) -> None:
    warnings = export(mixed_plan(merge=MergePlan(r=3, start_block=2)), "compressed-tensors", tmp_path / "q.json").warnings
    assert len(warnings) == 1 and "tokens merged per block 0,0,3,3" in warnings[0]
    assert export(mixed_plan(merge=MergePlan(r=0)), "compressed-tensors", tmp_path / "r.json").warnings == ()


def test_uncatalogued_model_is_exported_from_its_own_layers(tmp_path: Path) -> None:
    from compressed_tensors.quantization import QuantizationConfig

    plan = Plan(model="traced_thing", layers={"enc.0.lin": LayerChoice(format="int8"), "enc.1.lin": LayerChoice()})
    result = export(plan, "compressed-tensors", tmp_path / "q.json")
    config = QuantizationConfig.model_validate(json.loads(result.path.read_text()))
    assert len(config.config_groups) == 1 and len(config.ignore) == 1
    assert any("not in the catalogue" in w for w in result.warnings)


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_format_lists_the_formats(tmp_path: Path) -> None:
    with pytest.raises(HwsearchError) as err:
        export(mixed_plan(), "onnx", tmp_path / "q.json")
    assert str(err.value) == "unknown export format 'onnx'; accepted: " + ", ".join(formats())
    assert list(tmp_path.iterdir()) == []


def test_plan_that_does_not_fit_its_model_writes_nothing(tmp_path: Path) -> None:
    plan = Plan(model=MODEL, layers={"blocks.9.mlp.fc1": LayerChoice(format="int8")})
    with pytest.raises(HwsearchError, match="unknown layer 'blocks.9.mlp.fc1'"):
        export(plan, "compressed-tensors", tmp_path / "q.json")
    with pytest.raises(HwsearchError, match="is a folder"):
        export(mixed_plan(), "plan", tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_export_json_and_warnings_on_stderr(tmp_path: Path) -> None:
    plan_path = tmp_path / "in.json"
    plan_path.write_text(lossy_plan().to_json())
    out = tmp_path / "q.json"
    res = CliRunner().invoke(app, ["export", "--plan", str(plan_path), "--format", "compressed-tensors",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["path"] == str(out) and doc["format"] == "compressed-tensors"
    assert doc["plan_path"] == str(tmp_path / "q.plan.json") and len(doc["warnings"]) == 6
    lines = res.stderr.strip().splitlines()
    assert lines == [f"warning: {w}" for w in doc["warnings"]]


def test_warnings_go_through_python_warnings_and_files_are_readable(tmp_path: Path) -> None:
    """`hw.export` says what it drops through `warnings` (stderr by default), writes files with the
    mode any file the user writes gets (not a temporary file's 0600), and reports the plan's figures."""
    import os
    import warnings

    import hwsearch as hw
    from hwsearch.export import ExportWarning

    plan = lossy_plan().model_copy(update={"predicted": {
        "latency_ms": Figure(value=12.5, unit="ms", provenance=Provenance(source="predictor"))}})
    old = os.umask(0o022)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = hw.export(plan, "compressed-tensors", tmp_path / "q.json")
    finally:
        os.umask(old)
    assert [str(w.message) for w in caught if w.category is ExportWarning] == \
        [f"compressed-tensors export {tmp_path / 'q.json'}: {line}" for line in result.warnings]
    assert len(result.warnings) == 6 and all(w.filename == __file__ for w in caught)  # points at the caller
    for f in (result.path, result.plan_path):
        assert f.stat().st_mode & 0o777 == 0o644
    assert result.predicted == {"latency_ms": 12.5} and result.figures() == "predicted latency_ms 12.5"


def test_plan_validate_says_what_an_export_is(tmp_path: Path) -> None:
    runner = CliRunner()
    for fmt, name in (("compressed-tensors", "q.json"), ("modelopt", "m.yaml")):
        with pytest.warns(UserWarning):
            export(lossy_plan(), fmt, tmp_path / name)
        res = runner.invoke(app, ["plan", "validate", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        first, second = res.stdout.strip().splitlines()
        assert "written by `hwsearch export`, not a plan" in first and first.startswith(str(tmp_path / name))
        assert second.startswith(f"{tmp_path / name.split('.')[0]}.plan.json: valid plan for {MODEL}")
    (tmp_path / "q.plan.json").unlink()
    (tmp_path / "other.json").write_text('{"a": 1}')
    for name, says in (("q.json", "which is missing; accepted:"),
                       ("other.json", "is neither a plan nor a file `hwsearch export` wrote")):
        proc = subprocess.run([sys.executable, "-m", "hwsearch.cli", "plan", "validate", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr


def test_boolean_flags_are_shown_as_flags() -> None:
    proc = subprocess.run([sys.executable, "-m", "hwsearch.cli", "jobs", "resume", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "<bool>" not in proc.stdout and "--detach " in proc.stdout and "--json" in proc.stdout


def test_cli_unknown_format_is_one_line(tmp_path: Path) -> None:
    plan_path = tmp_path / "in.json"
    plan_path.write_text(mixed_plan().to_json())
    proc = subprocess.run(
        [sys.executable, "-m", "hwsearch.cli", "export", "--plan", str(plan_path), "--format", "tflite",
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown export format 'tflite'; accepted: plan, compressed-tensors, modelopt"]


def test_torch_is_untouched_by_the_test_dependency() -> None:
    """compressed-tensors must not have replaced the project's torch build."""
    assert torch.__version__.startswith("2.13.0")


def test_a_target_recognises_its_own_files(tmp_path: Path) -> None:
    """`hwsearch plan validate` knows a new target's files from its registration alone."""
    from hwsearch.export.identify import describe, identify
    from hwsearch.export.targets import Target, register_target, unregister_target

    register_target(Target("toy-lines", lambda view, path, kept_in: ("toy v1\n", []), "toy.txt", "text/plain",
                           what="a toy layer list", recognise=lambda text: text.startswith("toy v1\n")))
    try:
        result = export(Plan(model="vit_tiny"), "toy-lines", tmp_path / "p.toy")
        assert identify(result.path.read_text()) == "toy-lines"
        assert describe(result.path, "toy-lines").startswith(f"{result.path} is a toy layer list written by")
    finally:
        unregister_target("toy-lines")
    assert identify("toy v1\n") is None
