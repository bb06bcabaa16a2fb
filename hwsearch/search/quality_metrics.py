"""What a quality metric means to a search: its direction, its label, and the models that report it.

The one place a metric's direction is said. Everything quality flows through reads it from here:
the quality objective's direction (Optuna studies, Pareto fronts, knapsack warm start, reference
front), the sensitivity proxy's curve (a summed divergence lowers a higher-is-better metric towards
its floor and raises a lower-is-better one), the `min_quality` constraint ("no worse than": >= for
top-1, <= for perplexity) and the dashboard's axis labels. Pure description: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwsearch.errors import unknown

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class QualityMetric:
    """A quality metric: `direction` says which way is better; `label` is how it is shown."""

    name: str
    direction: str
    label: str

    @property
    def sign(self) -> float:
        """Multiply by this to get a value to minimise (+1 lower is better, -1 higher is better)."""
        return 1.0 if self.direction == "minimize" else -1.0

    def better(self, a: float, b: float) -> bool:
        """Whether quality `a` is strictly better than `b`."""
        return self.sign * a < self.sign * b


METRICS: dict[str, QualityMetric] = {
    "top1": QualityMetric("top1", "maximize", "top-1 accuracy"),
    "cosine": QualityMetric("cosine", "maximize", "cosine to the uncompressed embeddings"),
    "perplexity": QualityMetric("perplexity", "minimize", "perplexity (lower is better)"),
    "custom": QualityMetric("custom", "maximize", "quality (your evaluate, higher is better)"),
}
# The catalogue models with weights and the metric their quality task reports.
MODEL_METRICS: dict[str, str] = {"digits_vit": "top1", "minilm": "cosine", "tiny_llama": "perplexity"}
DEFAULT_METRIC = "custom"


def quality_metric(name: str | None = None) -> QualityMetric:
    """The metric called `name` (None: a user's own evaluate, higher is better)."""
    name = DEFAULT_METRIC if name is None else name
    if name not in METRICS:
        raise unknown("quality metric", name, METRICS)
    return METRICS[name]


def model_metric(model: str | None) -> QualityMetric:
    """The metric the quality of `model` (a catalogue reference such as `tiny_llama:tokens=1`) is
    measured in; a model outside `MODEL_METRICS` (a torch model with its own evaluate) is `custom`."""
    name = None if model is None else str(model).partition(":")[0]
    return quality_metric(MODEL_METRICS.get(name or "", DEFAULT_METRIC))
