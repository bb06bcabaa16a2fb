"""HELP-style meta-learned latency predictor that adapts to a new device from a few samples.

Why this design (measured on HELP's meta-validation devices, see ``hwsearch bench help``):

* The target is log-latency relative to the device's scale, ``log(y) - mean(log(hw))``, where
  ``hw`` is the device's hardware embedding (its latencies on a fixed reference set). Devices
  differ mostly by a scale plus a smooth reweighting of what is expensive, which is additive in
  log space; predictions come back as ``exp`` and are therefore milliseconds.
* A shared feature network ``phi(x, hw)`` (an MLP whose hidden layers are FiLM-modulated by the
  hardware embedding, as in HELP) maps an architecture/kernel to ``k`` basis functions.
  A device is a linear head on that basis.
* Adaptation is closed-form: the head is a ridge regression on the few shots, shrunk toward a
  prior head predicted from the hardware embedding (``w0(hw)``) with meta-learned per-basis
  precisions. This is the ANIL / R2-D2 family: an exact inner-loop solution instead of MAML's
  gradient steps, so it cannot diverge on 10 points, is cheap, and is differentiable, so
  ``phi``, ``w0`` and the precisions are meta-trained end to end on episodes (support -> adapted
  head -> query loss).
* Few training devices make few tasks. When several tasks share the same rows (as in HELP's
  data), episodes also use synthetic devices that interpolate two real devices geometrically
  (log-latencies and log-embeddings mixed with the same weight), which keeps the task
  distribution dense.
* Optionally (``device_prior > 0``) the adapted head's prior covariance gets an extra term
  ``device_prior * C``, C = second moment of the heads the training devices get from many of
  their own rows: moving toward a combination of training devices is then cheap (the "similar
  devices are correlated" prior). ``shrink`` scales the isotropic precision at adaptation.
* ``n_ensemble = K`` meta-trains K networks from different seeds (initialisation, episodes and
  synthetic devices); each adapts its own head to the same shots and their log-latencies are
  averaged (a geometric mean of milliseconds). Costs K times the meta-training time; on HELP's
  meta-validation devices K=3 raised mean Spearman 0.959 -> 0.964 (NB201), 0.929 -> 0.951
  (FBNet).
* ``n_linear = m`` appends the last ``m`` feature columns (standardised) to the learned basis,
  so hand-made cost estimates (e.g. log MACs / weights / activations of the architecture) are
  basis functions whose weights the few shots set directly, with a meta-learned precision like
  the rest of the head. On HELP's FBNet space with 5 such costs, held-out training devices went
  0.903 -> 0.931 mean Spearman (a FLOPs-like device such as pixel3 0.866 -> 0.940).
* ``rank_weight > 0`` adds a pairwise (RankNet) term on the query set to the episode loss, since
  the benchmark metric is a rank correlation. Off by default: with K=3 on the
  meta-validation devices rank_weight=0.05 gave NB201 0.9635 -> 0.9647 but FBNet 0.9512 -> 0.9335.

Nothing here knows about HELP: any numeric feature matrix and any embedding length works.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device
from hwsearch.errors import HwsearchError
from hwsearch.predictors.base import (
    Estimator,
    check_latency,
    check_X,
    pack_torch,
    torch_payload,
    torch_state,
    unpack_torch,
)
from hwsearch.predictors.features import FEATURE_VERSION
from hwsearch.predictors.kinds import PredictorKind, register_kind
from hwsearch.predictors.metrics import score_by_op
from hwsearch.predictors.splits import TEST_FRACTION, random_split
from hwsearch.predictors.store import store_predictor

if TYPE_CHECKING:
    from hwsearch.predictors.dataset import Dataset

META_KIND = "meta"
ADAPTED_KIND = "meta-adapted"
_MEMBER_SEED_STRIDE = 1000  # ensemble member m is meta-trained with seed + m * stride


def _pairwise_rank_loss(pred, target, tau: float):
    """RankNet loss over all query pairs: softplus(-sign(t_i - t_j) (p_i - p_j) / tau), pairs with ties skipped."""
    import torch

    dp = (pred.unsqueeze(-1) - pred.unsqueeze(-2)) / tau
    sg = torch.sign(target.unsqueeze(-1) - target.unsqueeze(-2))
    mask = sg != 0
    return torch.nn.functional.softplus(-sg * dp)[mask].mean() if bool(mask.any()) else pred.sum() * 0.0


def _pack_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One tensor dict for K networks: plain keys for one network (the format before ensembles)."""
    if len(states) == 1:
        return dict(states[0])
    return {f"m{i}.{k}": v for i, st in enumerate(states) for k, v in st.items()}


def _unpack_states(state: dict[str, Any], n: int) -> list[dict[str, Any]]:
    if n == 1:
        return [state]
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, v in state.items():
        m, _, rest = key.partition(".")
        i = int(m[1:]) if m[:1] == "m" and m[1:].isdigit() else -1
        if not 0 <= i < n:
            raise HwsearchError(f"stored ensemble has an unexpected tensor {key!r}; expected {n} members")
        out[i][rest] = v
    return out


@dataclass(frozen=True)
class MetaTask:
    """One device for meta-training: rows of features, their latencies and the device embedding."""

    name: str
    X: np.ndarray
    y_ms: np.ndarray
    hw_embedding: np.ndarray


@dataclass(frozen=True)
class _Config:
    n_features: int
    n_embedding: int
    hidden: int
    n_basis: int
    n_layers: int
    film: bool
    linear: bool
    device_prior: float = 0.0
    shrink: float = 1.0
    n_ensemble: int = 1
    n_linear: int = 0


def _hw_log(hw: np.ndarray) -> tuple[np.ndarray, float]:
    """Centred log-embedding (the device's 'shape') and its mean (the device's scale)."""
    h = np.log(np.asarray(hw, dtype=np.float64))
    s = float(h.mean())
    return h - s, s


def _build_net(cfg: _Config):
    import torch
    from torch import nn

    class Net(nn.Module):
        """phi(x, hw) basis + prior head w0(hw) + log precisions of the ridge."""

        def __init__(self) -> None:
            super().__init__()
            d, e, h, k = cfg.n_features, cfg.n_embedding, cfg.hidden, cfg.n_basis
            self.register_buffer("x_mu", torch.zeros(d))
            self.register_buffer("x_sd", torch.ones(d))
            self.register_buffer("h_mu", torch.zeros(e))
            self.register_buffer("h_sd", torch.ones(e))
            dims = [d] + [h] * cfg.n_layers
            self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
            self.out = nn.Linear(h, k)
            self.film = nn.Linear(e, 2 * h * cfg.n_layers) if cfg.film else None
            if self.film is not None:
                nn.init.zeros_(self.film.weight)
                nn.init.zeros_(self.film.bias)
            nb = k + 1 + (d if cfg.linear else cfg.n_linear)
            self.prior = nn.Sequential(nn.Linear(e, h), nn.SiLU(), nn.Linear(h, nb))
            self.log_prec = nn.Parameter(torch.zeros(nb))
            # spread of the training devices' heads (filled after meta-training)
            self.register_buffer("head_cov", torch.zeros(nb, nb))

        def basis(self, x, hc):
            """x: (B, n, d), hc: (B, e) -> (B, n, k [+ d | n_linear] + 1): phi, [scaled x,] constant."""
            z = (x - self.x_mu) / self.x_sd
            if cfg.linear:
                raw = [z / math.sqrt(cfg.n_features)]
            elif cfg.n_linear:
                raw = [z[..., -cfg.n_linear :] / math.sqrt(cfg.n_linear)]
            else:
                raw = []
            hz = (hc - self.h_mu) / self.h_sd
            film = self.film(hz).unsqueeze(1) if self.film is not None else None
            hdim = cfg.hidden
            for i, layer in enumerate(self.body):
                z = layer(z)
                if film is not None:
                    g = film[..., 2 * i * hdim : (2 * i + 1) * hdim]
                    b = film[..., (2 * i + 1) * hdim : (2 * i + 2) * hdim]
                    z = z * (1.0 + g) + b
                z = torch.nn.functional.silu(z)
            phi = self.out(z)
            return torch.cat([phi, *raw, torch.ones_like(phi[..., :1])], dim=-1)

        def head_prior(self, hc):
            return self.prior((hc - self.h_mu) / self.h_sd)

        def adapt_head(self, phi_s, r_s, hc):
            """Ridge toward the prior: w = w0 + (PᵀP + diag(λ))⁻¹ Pᵀ (r - P w0)."""
            w0 = self.head_prior(hc)
            lam = torch.exp(self.log_prec)
            a = phi_s.transpose(1, 2) @ phi_s + torch.diag_embed(lam.expand_as(w0))
            resid = r_s - (phi_s @ w0.unsqueeze(-1)).squeeze(-1)
            rhs = (phi_s.transpose(1, 2) @ resid.unsqueeze(-1)).squeeze(-1)
            return w0 + torch.linalg.solve(a, rhs)

        def adapt_head_devices(self, phi_s, r_s, hc, kappa: float, shrink: float = 1.0):
            """Bayesian head with prior covariance diag(1/λ) + κ·C (C: second moment of training heads).

            Directions in which the training devices differ are cheap to move along, so a few
            shots can place a new device among (or beyond) the training devices.
            """
            w0 = self.head_prior(hc)
            cov = torch.diag(torch.exp(-self.log_prec)) / shrink + kappa * self.head_cov
            sp = cov @ phi_s.transpose(1, 2)  # (B, nb, n)
            k = phi_s @ sp + torch.eye(phi_s.shape[1], dtype=phi_s.dtype)
            resid = r_s - (phi_s @ w0.unsqueeze(-1)).squeeze(-1)
            return w0 + (sp @ torch.linalg.solve(k, resid.unsqueeze(-1))).squeeze(-1)

    return Net()


@dataclass(eq=False)
class MetaPredictor(Estimator):
    """Meta-learned, hardware-conditioned latency predictor (HELP-style, closed-form adaptation).

    ``meta_fit(tasks)`` learns across devices; ``adapt(hw_embedding, X_shots, y_shots)`` returns a
    :class:`AdaptedMetaPredictor` for one device that predicts milliseconds.
    """

    kind: ClassVar[str] = META_KIND
    fitted_attr: ClassVar[str] = "net_"
    unfitted_hint: ClassVar[str] = "is not meta-trained yet; call meta_fit(tasks) first"

    hidden: int = 128
    n_basis: int = 32
    n_layers: int = 2
    film: bool = True
    linear: bool = False
    steps: int = 500
    batch_tasks: int = 8
    support_min: int = 5
    support_max: int = 30
    query: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    mix: float = 0.5
    mix_range: tuple[float, float] = (0.0, 1.0)
    device_prior: float = 0.0
    shrink: float = 1.0
    seed: int = 0
    n_ensemble: int = 1
    rank_weight: float = 0.0
    rank_tau: float = 0.1
    n_linear: int = 0

    def __post_init__(self) -> None:
        if int(self.n_ensemble) < 1:
            raise HwsearchError(f"n_ensemble {self.n_ensemble} out of range; accepted: 1 or more")
        self.mix_range = tuple(self.mix_range)  # type: ignore[assignment]
        self.n_ensemble = int(self.n_ensemble)
        self.n_linear = int(self.n_linear)
        self.nets_: list[Any] = []
        self.net_: Any = None
        self.config_: _Config | None = None

    # -- meta-training ---------------------------------------------------------------------
    def _check_tasks(self, tasks: Sequence[MetaTask]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
        if len(tasks) < 1:
            raise HwsearchError("meta_fit needs at least one task (device); got none")
        d = e = None
        out = []
        for t in tasks:
            X = check_X(t.X, d)
            d = X.shape[1]
            y = check_latency(t.y_ms, X.shape[0])
            hw = check_latency(t.hw_embedding, np.asarray(t.hw_embedding).size)
            if e is None:
                e = hw.size
            elif hw.size != e:
                raise HwsearchError(f"task {t.name!r} has a hardware embedding of length {hw.size}; others have {e}")
            if X.shape[0] < 2:
                raise HwsearchError(f"task {t.name!r} has {X.shape[0]} rows; accepted: at least 2")
            hc, s = _hw_log(hw)
            out.append((X, np.log(y) - s, hc, s))
        return out

    def meta_fit(
        self,
        tasks: Sequence[MetaTask],
        valid_tasks: Sequence[MetaTask] = (),
        valid_shots: int = 10,
        eval_every: int = 100,
        progress: Callable[[int, int], None] | None = None,
    ) -> MetaPredictor:
        """Meta-train on ``tasks``; with ``valid_tasks``, keep the state with the lowest validation loss.

        Validation adapts each valid task on a fixed draw of ``valid_shots`` rows and scores the log
        error on the rest (model selection only; never pass test devices here). With
        ``n_ensemble > 1`` that many networks are meta-trained, each from its own seed (its own
        initialisation, episodes and synthetic devices); an adapted predictor averages their
        log-latency predictions.
        """
        data = self._check_tasks(tasks)
        vdata = self._check_tasks(valid_tasks) if valid_tasks else []
        d, e = data[0][0].shape[1], data[0][2].size
        for X, _, hc, _ in vdata:
            if X.shape[1] != d or hc.size != e:
                raise HwsearchError("validation tasks must have the same feature and embedding sizes as training tasks")
        cfg = _Config(d, e, self.hidden, self.n_basis, self.n_layers, self.film, self.linear, self.device_prior,
                      self.shrink, self.n_ensemble, min(self.n_linear, d))
        allX = np.concatenate([t[0] for t in data])
        allH = np.stack([t[2] for t in data])

        # tasks measured on identical rows can be interpolated into synthetic devices
        groups: dict[tuple, list[int]] = {}
        for i, (X, *_rest) in enumerate(data):
            groups.setdefault((X.shape, hashlib.sha1(X.tobytes()).hexdigest()), []).append(i)
        mixable = [g for g in groups.values() if len(g) > 1]

        vbatches = []
        vrng = np.random.default_rng(self.seed + 1)
        for X, r, hc, _ in vdata:
            idx = vrng.permutation(X.shape[0])
            s, q = idx[:valid_shots], idx[valid_shots:]
            vbatches.append((X[s], r[s], X[q], r[q], hc))

        total = self.steps * self.n_ensemble
        nets, losses = [], []
        for m in range(self.n_ensemble):
            # member m: its own initialisation, episodes and synthetic-device draws
            seed = self.seed + _MEMBER_SEED_STRIDE * m
            done = m * self.steps
            prog = (lambda i, n, done=done: progress(done + i, total)) if progress is not None else None
            net, best = self._fit_member(cfg, data, mixable, vbatches, allX, allH, seed, eval_every, prog)
            nets.append(net)
            losses.append(best)
        self.nets_, self.net_, self.config_ = nets, nets[0], cfg
        self.valid_loss_ = float(np.mean(losses)) if vbatches else None
        return self

    def _fit_member(self, cfg, data, mixable, vbatches, allX, allH, seed, eval_every, progress):
        """Meta-train one network; returns it (best validation checkpoint, if any) and that loss."""
        import torch

        e = cfg.n_embedding
        rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _build_net(cfg).double()
        net.x_mu.copy_(torch.from_numpy(allX.mean(0)))
        net.x_sd.copy_(torch.from_numpy(allX.std(0) + 1e-6))
        net.h_mu.copy_(torch.from_numpy(allH.mean(0)))
        net.h_sd.copy_(torch.from_numpy(allH.std(0) + 1e-3 if len(data) > 1 else np.ones(e)))

        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=max(self.steps, 1),
                                                    pct_start=0.1)
        best, best_state = math.inf, None
        for step in range(self.steps):
            xs, rs, xq, rq, hcs = self._episode(data, mixable, rng)
            w = net.adapt_head(net.basis(xs, hcs), rs, hcs)
            pred = (net.basis(xq, hcs) @ w.unsqueeze(-1)).squeeze(-1)
            loss = torch.mean((pred - rq) ** 2)
            if self.rank_weight > 0:
                loss = loss + self.rank_weight * _pairwise_rank_loss(pred, rq, self.rank_tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last = step + 1 == self.steps
            if vbatches and ((step + 1) % eval_every == 0 or last):
                v = self._valid_loss(net, vbatches)
                if v < best:
                    best = v
                    best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
            if progress is not None:
                progress(step + 1, self.steps)
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self._fill_head_cov(net, data, rng)
        return net, best

    def _episode(self, data, mixable, rng):
        import torch

        n_s = int(rng.integers(self.support_min, self.support_max + 1))
        xs, rs, xq, rq, hcs = [], [], [], [], []
        for _ in range(self.batch_tasks):
            if mixable and rng.random() < self.mix:
                g = mixable[int(rng.integers(len(mixable)))]
                a, b = rng.choice(g, size=2, replace=False)
                lo, hi = self.mix_range
                alpha = lo + (hi - lo) * rng.random()
                X = data[a][0]
                # geometric interpolation of two devices: log-latency and log-embedding mixed alike
                la, lb = data[a][1] + data[a][3], data[b][1] + data[b][3]
                ha, hb = data[a][2] + data[a][3], data[b][2] + data[b][3]
                h = alpha * ha + (1 - alpha) * hb
                s = h.mean()
                r, hc = alpha * la + (1 - alpha) * lb - s, h - s
            else:
                X, r, hc, _ = data[int(rng.integers(len(data)))]
            n = X.shape[0]
            ns = min(n_s, n - 1)
            idx = rng.permutation(n)[: ns + min(self.query, n - ns)]
            s_idx, q_idx = idx[:ns], idx[ns:]
            xs.append(X[s_idx][: n_s])
            rs.append(r[s_idx])
            xq.append(X[q_idx])
            rq.append(r[q_idx])
            hcs.append(hc)
        # equal sizes within a batch (tasks may differ in row count): trim to the smallest
        ms = min(len(a) for a in rs)
        mq = min(len(a) for a in rq)
        t = lambda arrs, m: torch.from_numpy(np.stack([a[:m] for a in arrs]))  # noqa: E731
        return t(xs, ms), t(rs, ms), t(xq, mq), t(rq, mq), torch.from_numpy(np.stack(hcs))

    @staticmethod
    def _fill_head_cov(net, data, rng, rows: int = 2000) -> None:
        """Second moment of the heads the training devices get from many of their own rows."""
        import torch

        heads = []
        with torch.no_grad():
            for X, r, hc, _ in data:
                idx = rng.permutation(X.shape[0])[:rows]
                h = torch.from_numpy(hc)[None]
                phi = net.basis(torch.from_numpy(X[idx])[None], h)
                heads.append(net.adapt_head(phi, torch.from_numpy(r[idx])[None], h)[0])
            # uncentred second moment: its span holds every training head, so a new device can be
            # a (scaled) combination of training devices, not only a shift within their spread
            w = torch.stack(heads)
            net.head_cov.copy_(w.T @ w / max(len(heads), 1))

    @staticmethod
    def _valid_loss(net, vbatches) -> float:
        import torch

        with torch.no_grad():
            tot = 0.0
            for xs, rs, xq, rq, hc in vbatches:
                h = torch.from_numpy(hc)[None]
                w = net.adapt_head(net.basis(torch.from_numpy(xs)[None], h), torch.from_numpy(rs)[None], h)
                pred = (net.basis(torch.from_numpy(xq)[None], h) @ w.unsqueeze(-1)).reshape(-1)
                tot += float(torch.mean((pred - torch.from_numpy(rq)) ** 2))
        return tot / len(vbatches)

    # -- adaptation ------------------------------------------------------------------------
    def adapt(self, hw_embedding: np.ndarray, X_shots: np.ndarray, y_shots: np.ndarray) -> AdaptedMetaPredictor:
        """A predictor for one device from its hardware embedding and a few measured rows (ms)."""
        self._require_fitted()
        assert self.config_ is not None
        hw = check_latency(hw_embedding, np.asarray(hw_embedding).size)
        if hw.size != self.config_.n_embedding:
            raise HwsearchError(
                f"hardware embedding has {hw.size} values; this predictor accepts {self.config_.n_embedding}"
            )
        states = [net.state_dict() for net in self.nets_]
        return AdaptedMetaPredictor(self.config_, states, hw).fit(X_shots, y_shots)

    # -- storage ---------------------------------------------------------------------------
    def _fitted_state(self) -> tuple[dict[str, Any], bytes]:
        return {"config": asdict(self.config_)}, torch_payload(_pack_states([net.state_dict() for net in self.nets_]))

    def _restore(self, header: dict[str, Any], payload: bytes) -> None:
        self.config_ = cfg = _Config(**header["config"])
        self.nets_ = []
        for st in _unpack_states(torch_state(payload), cfg.n_ensemble):
            net = _build_net(cfg).double()
            net.load_state_dict(st)
            net.eval()
            self.nets_.append(net)
        self.net_ = self.nets_[0]


class AdaptedMetaPredictor:
    """The meta-learned predictor specialised to one device; predicts milliseconds.

    ``fit(X, y)`` re-solves the device head from those rows (shrunk toward the meta-learned prior
    for this hardware embedding), so the object obeys :class:`LatencyPredictor`. An ensemble
    adapts each member's head on the same rows and averages the members' log-latencies.
    """

    kind = ADAPTED_KIND

    def __init__(self, config: _Config, states: dict[str, Any] | Sequence[dict[str, Any]],
                 hw_embedding: np.ndarray) -> None:
        import torch

        self.config = config
        states = [states] if isinstance(states, dict) else list(states)
        if len(states) != config.n_ensemble:
            raise HwsearchError(f"got {len(states)} network states; this predictor has {config.n_ensemble}")
        self.nets = []
        for st in states:
            net = _build_net(config).double()
            net.load_state_dict(st)
            net.eval()
            self.nets.append(net)
        self.hw_embedding = np.asarray(hw_embedding, dtype=np.float64)
        hc, self.scale_ = _hw_log(self.hw_embedding)
        self._hc = torch.from_numpy(hc)[None]
        with torch.no_grad():
            self.heads_ = [net.head_prior(self._hc)[0] for net in self.nets]

    def fit(self, X: np.ndarray, y: np.ndarray) -> AdaptedMetaPredictor:
        import torch

        X = check_X(X, self.config.n_features)
        y = check_latency(y, X.shape[0])
        if X.shape[0] == 0:
            return self
        x = torch.from_numpy(X)[None]
        r = torch.from_numpy(np.log(y) - self.scale_)[None]
        heads = []
        with torch.no_grad():
            for net in self.nets:
                phi = net.basis(x, self._hc)
                if self.config.device_prior > 0:
                    heads.append(net.adapt_head_devices(
                        phi, r, self._hc, self.config.device_prior, self.config.shrink)[0])
                else:
                    heads.append(net.adapt_head(phi, r, self._hc)[0])
        self.heads_ = heads
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        import torch

        X = check_X(X, self.config.n_features)
        x = torch.from_numpy(X)[None]
        with torch.no_grad():
            r = sum(net.basis(x, self._hc)[0] @ head for net, head in zip(self.nets, self.heads_, strict=True))
        return np.exp(r.numpy() / len(self.nets) + self.scale_)

    def to_bytes(self) -> bytes:
        import torch

        header = {"kind": ADAPTED_KIND, "config": asdict(self.config)}
        state = _pack_states([net.state_dict() for net in self.nets])
        for i, head in enumerate(self.heads_):
            state["__head" if len(self.heads_) == 1 else f"__head{i}"] = head
        state["__hw_embedding"] = torch.from_numpy(self.hw_embedding)
        return pack_torch(header, state)

    @classmethod
    def from_bytes(cls, data: bytes) -> AdaptedMetaPredictor:
        header, state = unpack_torch(data, ADAPTED_KIND)
        config = _Config(**header["config"])
        n = config.n_ensemble
        heads = [state.pop("__head")] if n == 1 else [state.pop(f"__head{i}") for i in range(n)]
        hw = state.pop("__hw_embedding").numpy()
        obj = cls(config, _unpack_states(state, n), hw)
        obj.heads_ = heads
        return obj


# -- training from the database (`hwsearch train --kind meta`) ------------------------------------
# A device takes part in meta-training with its full reference set and this many kernels.
MIN_META_ROWS = 40
META_SHOTS = 10
DEFAULT_META_PARAMS: dict[str, Any] = {"steps": 600, "support_min": 5, "support_max": 40}


def _meta_candidates(engine: Engine) -> list[tuple[str, Dataset, np.ndarray]]:
    """Devices fit for meta-training: full reference set and at least MIN_META_ROWS kernels."""
    from hwsearch.predictors.dataset import hardware_embedding, load_dataset, load_rows

    with session_scope(engine) as session:
        names = session.scalars(select(Device.name).order_by(Device.name)).all()
    out = []
    for name in names:
        _, rows = load_rows(engine, name)
        if len(rows) < MIN_META_ROWS:
            continue
        try:
            emb = hardware_embedding(rows, name)
        except HwsearchError:
            continue
        out.append((name, load_dataset(engine, name), emb))
    return out


def _shots(ds: Dataset, pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The reference kernels (always) plus `n` random other rows drawn from `pool`."""
    from hwsearch.profilers.sampling import reference_set

    ref = set(reference_set())
    is_ref = np.array([s in ref for s in ds.specs])
    pool = np.asarray(pool, dtype=int)
    extra = pool[~is_ref[pool]]
    rng = np.random.default_rng(seed)
    pick = rng.choice(extra, size=min(n, len(extra)), replace=False) if len(extra) else np.zeros(0, dtype=int)
    return np.concatenate([np.flatnonzero(is_ref), np.sort(pick)]).astype(int)


def train_meta(
    engine: Engine, device: str, params: dict[str, Any] | None = None, seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None, shots: int = META_SHOTS,
) -> dict[str, Any]:
    """Meta-train on every device fit for it; score few-shot adaptation on `device`; store.

    The row is shared by all devices (``device_id`` NULL, the training devices in ``devices``)
    and adapted on the fly for a device from its reference-set latencies plus its few measured
    kernels. Scoring: with other devices available, `device` is left out of meta-training (a new
    device); otherwise every device's rows are split and the held-out rows of `device` are
    scored. Either way the adapted predictor sees only the reference set plus `shots` other kernels.
    """
    from hwsearch.predictors.dataset import device_backend, load_rows, no_measurements
    from hwsearch.profilers.sampling import reference_set

    device_backend(engine, device)  # unknown device -> one-line error listing devices
    _, rows = load_rows(engine, device)
    if not rows:
        raise no_measurements(device)
    cands = _meta_candidates(engine)
    if not cands:
        raise HwsearchError(
            f"meta-training needs a device with its full reference set and at least {MIN_META_ROWS} measured kernels; "
            "none has that yet; accepted: profile one (`hwsearch profile --local --budget quick`)"
        )
    hp = {**DEFAULT_META_PARAMS, **(params or {}), "seed": seed}
    stage = (lambda name: (lambda i, n: progress(name, i, n)) if progress else None)  # noqa: E731
    names = [c[0] for c in cands]
    others = [c for c in cands if c[0] != device]
    target = next((c for c in cands if c[0] == device), None)
    metrics: dict[str, Any] = {"shots": shots, "seed": seed}
    if target is not None and len(target[1]) >= len(reference_set()) + shots + 10:
        _, ds, emb = target
        if others:
            model = MetaPredictor(**hp).meta_fit([MetaTask(n, d.X, d.y_ms, e) for n, d, e in others],
                                                 progress=stage("meta-training (held-out score)"))
            seen = _shots(ds, np.arange(len(ds)), shots, seed)
            test = np.setdiff1d(np.arange(len(ds)), seen)
            metrics["split"] = "device left out of meta-training"
        else:
            parts = {}
            for n, d, _ in cands:
                parts[n] = random_split(len(d), TEST_FRACTION, seed)
            model = MetaPredictor(**hp).meta_fit(
                [MetaTask(n, d.X[parts[n][0]], d.y_ms[parts[n][0]], e) for n, d, e in cands],
                progress=stage("meta-training (held-out score)"))
            seen = _shots(ds, parts[device][0], shots, seed)
            test = parts[device][1]
            metrics["split"] = "rows: the device's held-out rows (no other device to leave it out)"
        adapted = model.adapt(emb, ds.X[seen], ds.y_ms[seen])
        metrics["held_out"] = score_by_op(adapted.predict(ds.X[test]), ds.subset(test))
        metrics["adapted_on"] = int(len(seen))
    else:
        metrics["split"] = "none: the device has too few kernels to hold any out"
    final = MetaPredictor(**hp).meta_fit([MetaTask(n, d.X, d.y_ms, e) for n, d, e in cands],
                                         progress=stage("meta-training (stored model)"))
    summary = {"devices": {n: len(d) for n, d, _ in cands}, "feature_version": FEATURE_VERSION,
               "reference_kernels": len(reference_set()), "params": final.get_params()}
    pid = store_predictor(engine, kind=META_KIND, name="meta", device_id=None, devices=names, target="kernel",
                          train_summary=summary, metrics={device: metrics}, artefact=final.to_bytes())
    return {"id": pid, "kind": META_KIND, "device": device, "devices": names, "metrics": metrics,
            "train_summary": summary}


register_kind(PredictorKind(META_KIND, MetaPredictor.from_bytes, "torch-state-dict", train_meta,
                            help="meta-learned, shared by all devices, adapted per device from a few kernels", order=1))
register_kind(PredictorKind(ADAPTED_KIND, AdaptedMetaPredictor.from_bytes, "torch-state-dict",
                            help="the meta-learned predictor adapted to one device", order=1))
