"""The plan document: JSON round trip, published schema, one-line validation errors."""

from __future__ import annotations

import json

import pytest

from hwsearch.errors import HwsearchError
from hwsearch.spaces import (
    PLAN_SCHEMA,
    Capabilities,
    Figure,
    Knobs,
    LayerChoice,
    MergePlan,
    Plan,
    Provenance,
    SearchSpace,
    get_model,
    validate_plan,
)


def full_plan() -> Plan:
    return Plan(
        model="digits_vit",
        device="cpu-test",
        layers={
            "blocks.0.attn.qkv": LayerChoice(format="int8"),
            "blocks.1.mlp.fc1": LayerChoice(format="int4", group_size=32, sparsity="2:4", rank=32),
        },
        merge=MergePlan(r=2, start_block=1),
        predicted={"latency_ms": Figure(value=1.5, unit="ms", provenance=Provenance(source="predictor", predictor_id="7", kind="xgb", device="cpu-test"))},
        measured={"quality": Figure(value=0.95, unit="top1", provenance=Provenance(source="eval", detail="digits test split"))},
    )


def test_plan_json_round_trip() -> None:
    plan = full_plan()
    text = plan.to_json()
    doc = json.loads(text)
    assert doc["schema"] == PLAN_SCHEMA and doc["layers"]["blocks.1.mlp.fc1"]["group_size"] == 32
    again = Plan.from_json(text)
    assert again == plan and again.to_json() == text
    listed = Plan(model="digits_vit", merge=[0, 2, 2, 2])
    assert Plan.from_json(listed.to_json()).merge == [0, 2, 2, 2]


def test_int4_gets_the_default_group_and_sparsity_is_canonical() -> None:
    choice = LayerChoice(format="int4", sparsity="2:4")
    assert choice.group_size == 128 and choice.label() == "int4g128/2:4"
    assert Plan(model="digits_vit").choice("head") == LayerChoice(format="fp32")


def test_published_json_schema() -> None:
    schema = Plan.json_schema()
    assert schema["$id"] == PLAN_SCHEMA
    assert {"schema", "model", "device", "layers", "merge", "predicted", "measured"} <= set(schema["properties"])
    assert schema["required"] == ["model"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ('{"schema": "hwsearch.plan/v9", "model": "m"}', "unknown plan schema 'hwsearch.plan/v9'"),
        ('{"model": "m", "layers": {"a": {"format": "int3"}}}', "layers.a.format: .*unknown format 'int3'"),
        ('{"model": "m", "layers": {"a": {"format": "int8", "group_size": 64}}}', "group_size=64 given for format 'int8'"),
        ('{"model": "m", "layers": {"a": {"format": "int4", "group_size": 48}}}', "unknown int4 group size 48; accepted: 32, 64, 128"),
        ('{"model": "m", "layers": {"a": {"sparsity": "5:4"}}}', "unknown sparsity pattern '5:4'"),
        ('{"model": "m", "colour": "red"}', "bad plan field colour"),
        ('{"layers": {}}', "bad plan field model"),
        ('{"model": "m", "merge": {"r": -1}}', "merge"),
        ("{not json", "plan is not JSON"),
    ],
)
def test_malformed_plans_get_one_line_errors(doc: str, message: str) -> None:
    with pytest.raises(HwsearchError, match=message) as err:
        Plan.from_json(doc)
    assert "\n" not in str(err.value)


def check_one_line(plan: Plan, spec, message: str, space=None) -> None:
    with pytest.raises(HwsearchError, match=message) as err:
        (space.check_plan(plan) if space else validate_plan(plan, spec))
    assert "\n" not in str(err.value)


def test_validation_against_a_model() -> None:
    spec = get_model("llama3_8b:blocks=2")
    validate_plan(Plan(model="llama3_8b", layers={"layers.0.mlp.down_proj": LayerChoice(format="int4")}), spec)
    check_one_line(Plan(model="llama3_8b", layers={"layers.9.mlp.up": LayerChoice()}), spec, "unknown layer 'layers.9.mlp.up'")
    qkv = {"layers.0.self_attn.q_proj": LayerChoice(format="int8"), "layers.0.self_attn.k_proj": LayerChoice(format="int4")}
    check_one_line(Plan(model="llama3_8b", layers=qkv), spec, "group constraint broken: block0.qkv .* on format")
    fused = {"layers.1.mlp.gate_proj": LayerChoice(format="bf16", sparsity="2:4"), "layers.1.mlp.up_proj": LayerChoice(format="bf16")}
    check_one_line(Plan(model="llama3_8b", layers=fused), spec, "block1.gate_up .* move together on sparsity")
    check_one_line(Plan(model="llama3_8b", layers={"layers.0.mlp.down_proj": LayerChoice(rank=4096)}), spec, "rank 4096")
    check_one_line(Plan(model="llama3_8b", merge=MergePlan(r=1)), spec, "cannot merge tokens")
    vit = get_model("digits_vit")
    check_one_line(Plan(model="digits_vit", merge=MergePlan(r=9)), vit, "merge r=9 at block 0 is out of range")
    check_one_line(Plan(model="digits_vit", merge=MergePlan(start_block=7)), vit, "start_block=7")


def test_validation_against_a_space() -> None:
    spec = get_model("vit_tiny")
    cpu = Capabilities.from_dict({"fp32": True, "bf16": True, "int8": True, "int4": True}, "cpu")
    space = SearchSpace(spec, cpu, Knobs(group_sizes=(64, 128)))
    space.check_plan(Plan(model="vit_tiny", layers={"head": LayerChoice(format="int8", rank=64)}))
    check_one_line(Plan(model="vit_tiny", layers={"head": LayerChoice(format="fp8")}), spec, "format fp8 is not in the space", space)
    check_one_line(Plan(model="vit_tiny", layers={"head": LayerChoice(sparsity="2:4")}), spec, "sparsity 2:4 is not in the space", space)
    check_one_line(Plan(model="vit_tiny", layers={"head": LayerChoice(rank=40)}), spec, "rank 40 is not in the space", space)
    check_one_line(
        Plan(model="vit_tiny", layers={"head": LayerChoice(format="int4", group_size=32)}), spec, "group size 32", space
    )
    check_one_line(Plan(model="vit_tiny", merge=MergePlan(r=5, start_block=3)), spec, "merge r=5 from block 3 is not in the space", space)


def test_cli_publishes_the_schema_and_validates_files(tmp_path):
    import json as _json

    from typer.testing import CliRunner

    from hwsearch.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["plan", "schema"])
    assert out.exit_code == 0 and _json.loads(out.stdout)["$id"] == "hwsearch.plan/v2"
    good = tmp_path / "good.json"
    good.write_text('{"schema": "hwsearch.plan/v1", "model": "vit_tiny", "device": "x", "layers": {"blocks.0.mlp.fc1": {"format": "int8"}}}')
    assert runner.invoke(app, ["plan", "validate", str(good)]).exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "hwsearch.plan/v1", "model": "vit_tiny", "device": "x", "layers": {"nope": {"format": "int8"}}}')
    res = runner.invoke(app, ["plan", "validate", str(bad)])
    assert res.exit_code != 0 and "unknown layer 'nope'" in str(res.exception)


def test_v1_plans_still_load_as_v2():
    from hwsearch.spaces.plan import PLAN_SCHEMA

    v1 = '{"schema": "hwsearch.plan/v1", "model": "vit_tiny", "layers": {"blocks.0.mlp.fc1": {"format": "int4", "group_size": 32}}}'
    plan = Plan.from_json(v1)
    assert PLAN_SCHEMA == "hwsearch.plan/v2" and json.loads(plan.to_json())["schema"] == PLAN_SCHEMA
    assert plan.choice("blocks.0.mlp.fc1").group_size == 32 and plan.kv_cache is None
    with pytest.raises(HwsearchError, match="not part of hwsearch.plan/v1"):
        Plan.from_json(v1.replace('"group_size": 32', '"scaling": "awq"'))


def test_kv_cache_choices_are_checked():
    from hwsearch.spaces.plan import KVCacheChoice

    assert KVCacheChoice(format="int4").group_size == 64 and KVCacheChoice(format="bf16").group_size is None
    with pytest.raises(ValueError, match="KV-cache format 'int3'"):
        KVCacheChoice(format="int3")
    with pytest.raises(HwsearchError, match="not a decoder block"):
        validate_plan(Plan(model="vit_tiny", kv_cache={"blocks.0": KVCacheChoice(format="int8")}), get_model("vit_tiny"))
    spec = get_model("llama3_8b:blocks=2")
    validate_plan(Plan(model="llama3_8b", kv_cache={"layers.1": KVCacheChoice(format="int8")}), spec)
    with pytest.raises(ValueError, match="awq only with int4"):
        LayerChoice(format="int8", scaling="awq")
