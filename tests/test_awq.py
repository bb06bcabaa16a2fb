"""AWQ int4: scales from calibration activations, applied by apply_plan, searched, priced and sized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hwsearch as hw
from hwsearch.errors import HwsearchError
from hwsearch.kernels.apply import layer_inputs
from hwsearch.kernels.awq import ALPHAS, awq_scale, awq_search, effective_weight
from hwsearch.kernels.expand import model_kernels
from hwsearch.kernels.modules import CompressedLinear
from hwsearch.kernels.specs import ElementwiseSpec, LinearSpec
from hwsearch.search.quality_tasks import QualityTask
from hwsearch.search.sensitivity import measure_sensitivity, quality_space
from hwsearch.spaces.knobs import Knobs, SearchSpace
from hwsearch.spaces.plan import LayerChoice, Plan
from hwsearch.spaces.size import linear_bytes

AWQ = LayerChoice(format="int4", group_size=32, scaling="awq")
PLAIN = LayerChoice(format="int4", group_size=32)


def outlier_inputs(rows: int, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Activations whose first 8 channels are 40x larger than the rest (what AWQ is for)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen)
    x[:, :8] *= 40.0
    return x


def linear(k: int = 256, n: int = 128, seed: int = 1) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n)


def relative_error(layer: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = ref(x)
        return float((layer(x).float() - want).pow(2).sum() / want.pow(2).sum())


def test_awq_lowers_int4_error_on_outlier_channels() -> None:
    torch.set_num_threads(1)
    lin, calib, held_out = linear(), outlier_inputs(512), outlier_inputs(256, seed=5)
    plain = CompressedLinear(lin, PLAIN)
    awq = CompressedLinear(lin, AWQ, calibration=calib)
    assert awq.awq is not None and awq.awq["alpha"] > 0
    assert awq.awq["error"] < 0.8 * awq.awq["plain_error"]
    # on inputs the calibration never saw, through the real kernel (bf16 activations, packed int4)
    assert relative_error(awq, lin, held_out) < 0.8 * relative_error(plain, lin, held_out)


def test_alpha_zero_is_plain_int4_so_the_search_is_never_worse_on_calibration() -> None:
    lin, x = linear(), torch.randn(300, 256)  # no outliers: AWQ has little to gain
    assert ALPHAS[0] == 0.0 and torch.equal(awq_scale(x.abs().mean(0), 0.0), torch.ones(256))
    found = awq_search(lin.weight, x, AWQ)
    assert found.error <= found.plain_error
    plain = effective_weight(lin.weight.detach(), PLAIN)
    assert found.plain_error == pytest.approx(float((x @ (plain - lin.weight).T.detach()).pow(2).sum()
                                                    / (x @ lin.weight.T.detach()).pow(2).sum()), rel=1e-4)


def test_alpha_is_chosen_on_the_model_output_so_awq_never_moves_it_more_than_plain() -> None:
    """apply_plan picks each AWQ layer's alpha by the whole model's output on the calibration
    inputs: each layer alone as AWQ moves it no more than the same layer as plain int4."""
    torch.set_num_threads(1)
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    spec = hw.from_torch(net, torch.randn(1, 16, 256), name="awq_mlp")
    calib = outlier_inputs(128).reshape(8, 16, 256)
    with torch.no_grad():
        want = net(calib)
    for name in ("0", "2"):
        moved = {}
        for label, choice in (("plain", PLAIN), ("awq", AWQ)):
            built = hw.apply_plan(net, Plan(model="awq_mlp", layers={name: choice}), spec, calibration=calib)
            with torch.no_grad():
                moved[label] = float((built(calib).float() - want).pow(2).sum() / want.pow(2).sum())
        # the kernel runs bf16 activations, the choice was made in fp32: a little slack for that
        assert moved["awq"] <= moved["plain"] * 1.05 + 1e-7, (name, moved)
    built = hw.apply_plan(net, Plan(model="awq_mlp", layers={"0": AWQ, "2": AWQ}), spec, calibration=calib)
    assert all(built.get_submodule(n).awq["alpha"] in ALPHAS for n in ("0", "2"))


def test_scales_are_normalised_and_deterministic() -> None:
    lin, x = linear(), outlier_inputs(400)
    a, b = awq_search(lin.weight, x, AWQ), awq_search(lin.weight, x.clone(), AWQ)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.weight, b.weight) and a.alpha == b.alpha
    assert float((a.scale.max() * a.scale.min()).sqrt()) == pytest.approx(1.0, rel=1e-5)
    assert float(a.scale[:8].min()) > float(a.scale[8:].max())  # the outlier channels are scaled up


def test_awq_search_takes_only_int4_and_matching_inputs() -> None:
    lin = linear()
    with pytest.raises(HwsearchError, match="AWQ scaling is for int4 layers"):
        awq_search(lin.weight, torch.randn(8, 256), LayerChoice(format="int8"))
    with pytest.raises(HwsearchError, match=r"accepted: activations \(tokens, 256\)"):
        awq_search(lin.weight, torch.randn(8, 100), AWQ)


def mlp_and_spec() -> tuple[torch.nn.Sequential, torch.Tensor, hw.ModelSpec]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    x = outlier_inputs(4 * 32).view(4, 32, 256)
    return net, x, hw.from_torch(net, x, name="mlp")


def test_plan_with_awq_round_trips_and_applies() -> None:
    net, x, spec = mlp_and_spec()
    plan = Plan(model="mlp", layers={"0": AWQ, "2": LayerChoice(format="int4", scaling="awq", sparsity="2:4")})
    assert Plan.from_json(plan.to_json()) == plan and plan.layers["0"].label() == "int4g32-awq"
    small = hw.apply_plan(net, plan, spec, calibration=x)
    again = hw.apply_plan(net, plan, spec, calibration=x)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values(), strict=True))
    assert small[0].input_scale.shape == (256,) and small[0].input_scale.dtype == torch.bfloat16
    for name, layer in (("0", spec.layer("0")), ("2", spec.layer("2"))):
        c = plan.layers[name]
        assert small.get_submodule(name).stored_bytes() == linear_bytes(
            layer.K, layer.N, c.format, c.group_size, c.sparsity, c.rank, layer.bias, c.scaling).total
    plain = hw.apply_plan(net, Plan(model="mlp", layers={"0": PLAIN}), spec)
    assert relative_error(small[0], net[0], x) < relative_error(plain[0], net[0], x)
    assert "int4g32-awq" in repr(small)


def test_missing_calibration_is_one_line_naming_what_to_pass() -> None:
    net, _, spec = mlp_and_spec()
    with pytest.raises(HwsearchError) as err:
        hw.apply_plan(net, Plan(model="mlp", layers={"0": AWQ}), spec)
    message = str(err.value)
    assert "\n" not in message and "AWQ int4 layers (0)" in message and "calibration=" in message
    with pytest.raises(HwsearchError, match="needs calibration inputs"):
        CompressedLinear(net[0], AWQ)


def test_layer_inputs_collects_each_layers_activations() -> None:
    net, x, _ = mlp_and_spec()
    found = layer_inputs(net, ["0", "2"], x)
    assert found["0"].shape == (128, 256) and torch.equal(found["0"], x.reshape(-1, 256))
    assert found["2"].shape == (128, 256) and layer_inputs(net, ["2"], x, max_rows=10)["2"].shape == (10, 256)

    class Keywords(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(256, 16)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.lin(input_ids)

    assert layer_inputs(Keywords(), ["lin"], {"input_ids": x})["lin"].shape == (128, 256)


def test_space_offers_awq_only_where_told() -> None:
    spec = hw.get_model("vit_tiny")
    knobs = Knobs(formats=("fp32", "int4"), group_sizes=(32, 128), sparsities=("dense",), low_rank=False)
    assert knobs.scalings is None and knobs.with_calibration(False).scalings == ()
    labels = [c.label() for c in SearchSpace(spec, knobs=knobs.with_calibration(True)).layers["blocks.0.mlp.fc1"].choices()]
    assert labels == ["fp32", "int4g32", "int4g32-awq", "int4g128", "int4g128-awq"]
    plain = SearchSpace(spec, knobs=knobs)  # left open: a space alone offers plain int4 only
    assert [c.label() for c in plain.layers["blocks.0.mlp.fc1"].choices()] == ["fp32", "int4g32", "int4g128"]
    with pytest.raises(HwsearchError, match="int4 scaling awq is not in the space; accepted: none"):
        plain.check_choice("blocks.0.mlp.fc1", LayerChoice(format="int4", scaling="awq"))
    sparse = Knobs(formats=("fp32", "int4"), group_sizes=(32,), sparsities=("dense", "2:4"), rank_step=64, scalings=("awq",))
    offered = SearchSpace(spec, knobs=sparse).layers["blocks.0.mlp.fc1"]
    assert [c.label() for c in offered.choices() if c.scaling] == ["int4g32-awq"]  # dense full rank only
    assert "dense full-rank layers only" in offered.why_not(LayerChoice(format="int4", group_size=32, sparsity="2:4", scaling="awq"))
    with pytest.raises(HwsearchError, match="unknown int4 scaling 'smooth'; accepted: awq"):
        Knobs(scalings=("smooth",))
    rng = __import__("random").Random(0)
    sampled = [SearchSpace(spec, knobs=knobs.with_calibration(True)).sample(rng, 0.9) for _ in range(5)]
    assert any(c.scaling == "awq" for p in sampled for c in p.layers.values())


def test_search_spec_offers_awq_when_quality_is_scored_on_a_catalogue_task() -> None:
    scored = hw.SearchSpec(model="digits_vit", device="d", objectives=["latency", "quality"])
    assert scored.knob_values().scalings == ("awq",)
    assert hw.SearchSpec(model="digits_vit", device="d").knob_values().scalings == ()
    off = hw.SearchSpec(model="digits_vit", device="d", objectives=["latency", "quality"], knobs={"scalings": []})
    assert off.knob_values().scalings == ()


def tiny_task(calibrated: bool = True) -> QualityTask:
    net, x, spec = mlp_and_spec()
    reference = net(x).detach()

    def score(module: torch.nn.Module, split: str) -> tuple[float, float]:
        with torch.no_grad():
            cos = float(torch.nn.functional.cosine_similarity(module(x), reference, dim=-1).mean())
        return cos, 1.0 - cos

    return QualityTask("mlp", "cosine", spec, net, score, "h", calibration=x if calibrated else None)


def test_sensitivity_measures_awq_layers_like_any_choice() -> None:
    task = tiny_task()
    knobs = Knobs(formats=("fp32", "int4"), group_sizes=(32,), sparsities=("dense",), low_rank=False, allow_emulated=True)
    space = quality_space(task, knobs)
    table = measure_sensitivity(task, space)
    for name in ("0", "2"):
        assert set(table.layers[name]) == {"int4g32", "int4g32-awq"}
    assert table.divergence["0"]["int4g32-awq"] < table.divergence["0"]["int4g32"]  # outlier inputs: AWQ helps
    for name in ("0", "2"):  # alphas chosen on the task's own divergence, with alpha 0 (plain) on the grid
        assert table.divergence[name]["int4g32-awq"] <= table.divergence[name]["int4g32"] * 1.05 + 1e-7
    assert task.measure(Plan(model="mlp", layers={"0": AWQ}), "calib")[0] > task.measure(Plan(model="mlp", layers={"0": PLAIN}), "calib")[0]
    uncalibrated = tiny_task(calibrated=False)
    assert quality_space(uncalibrated, knobs).knobs.scalings == ()
    with pytest.raises(HwsearchError, match="has no calibration inputs"):
        measure_sensitivity(uncalibrated, SearchSpace(uncalibrated.spec, knobs=Knobs(formats=("int4",), scalings=("awq",))))


class Flops:
    """A kernel predictor: 1 ms per GFLOP plus 0.01 ms a kernel."""

    def predict_specs(self, specs):
        return np.array([s.flops / 1e9 + 0.01 for s in specs])


def test_latency_prices_the_input_scale_as_one_elementwise_kernel() -> None:
    from hwsearch.predictors.model_latency import ModelLatency, Overhead
    from hwsearch.search.breakdown import layer_latency

    model = hw.get_model("vit_tiny")
    awq = LayerChoice(format="int4", scaling="awq")
    plan = Plan(model="vit_tiny", layers={"blocks.0.mlp.fc1": awq})
    owned = [s for owner, s in model_kernels(model, plan.layers) if owner == "blocks.0.mlp.fc1"]
    assert owned == [ElementwiseSpec("add", 197, 192, "bf16"), LinearSpec(197, 192, 768, "int4", 128)]
    ml = ModelLatency(model, Flops(), Overhead(scale=1.3, per_forward_ms=0.2, per_kernel_ms=0.003))
    plain = Plan(model="vit_tiny", layers={"blocks.0.mlp.fc1": LayerChoice(format="int4")})
    extra = ml.plan(plan).total_ms - ml.plan(plain).total_ms
    assert extra == pytest.approx(1.3 * (Flops().predict_specs([owned[0]])[0]) + 0.003)
    table = ml.table({"blocks.0.mlp.fc1": [LayerChoice(format="int4"), awq]})
    assert table.predict([plan, plain]) == pytest.approx([ml.plan(plan).total_ms, ml.plan(plain).total_ms])
    rows = layer_latency(ml, plan).set_index("layer")
    assert rows.loc["blocks.0.mlp.fc1", "choice"] == "int4g128-awq" and rows.loc["blocks.0.mlp.fc1", "kernels"] == 2
