"""A learned token likelihood: what the mixture's encoder output says about each source's token.

The counted table scores the mixture's *token* (ten bits of the encoder's output) and, with
hours of counts, rules the true pair out or ranks it below thousands of others (README,
"Where the loss is"). This model reads the mixture's continuous encoder output around each
step instead: a small non-causal convolutional network over the latents ``h_mix`` gives,
for each step ``t`` and each of the N sources ``s``, a distribution ``q_s(token | h_mix)``
over the K codes, trained by cross-entropy on mixtures made from the training stems (as the counts
are) against the codec's tokens of the stems. The separation uses it as a likelihood
ratio, the discriminative stand-in for ``p(h_mix | token)``::

    e[t, s, k] = log q_s(k | h_mix) - log u_s(k)

with ``u_s`` the training tokens' unigram frequencies: a search adds ``mu * sum_s e[t, s,
i_s]`` to each candidate tuple's score (:func:`lass.sampling.separate_tokens`,
``token_evidence``). The network sees ``receptive_field`` steps each side, so evidence for
steps ``a .. b`` is computed from the latents of ``a - R .. b + R`` alone
(:meth:`TokenEvidence.window`): a long input never holds ``(tokens, N, K)`` at once.

A model made with ``hop > 0`` also reads the mixture's samples: the waveform cut into the
codec's hops, ``(batch, hop, tokens)``, joins the latents as ``hop`` more input channels.
The encoder's outputs are what a codec trained on single sources keeps of a mixture; the
samples keep everything (the pitches and phases of every source), and on a mixture of four
oscillators they are what lets the network name each source's token (docs/n_sources.md).

Files are ``.npz`` (:func:`likelihood.table.save_model_file`): the network's weights, the
log-unigrams and a JSON record (``k``, ``dim``, ``width``, ``dilations``, ``n_sources``
(absent in two-source files), ``hop`` (absent when 0), the codec's identity, what it was
trained on).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from likelihood.errors import LikelihoodError
from likelihood.files import load_model_file, save_model_file

FORMAT_VERSION = 1
KIND = "token-evidence"
DEFAULT_DILATIONS = (1, 2, 4, 8)


class TokenEvidence(nn.Module):
    """``q_s(token | h_mix)`` for N sources, from the mixture's encoder outputs.

    Args:
        k: codebook size K.
        dim: the codec's latent size D.
        width: channels of the network.
        dilations: dilation of each residual convolution (kernel 3).
        meta: ``codec_identity`` and what the model was trained on.
        n_sources: N, the sources it predicts a token for.
        hop: the codec's hop when the model also reads the mixture's samples (0: the
            latents alone).
    """

    log_unigram: torch.Tensor

    def __init__(self, k: int, dim: int, width: int = 256,
                 dilations: tuple[int, ...] = DEFAULT_DILATIONS,
                 meta: dict[str, Any] | None = None, n_sources: int = 2, hop: int = 0
                 ) -> None:
        super().__init__()
        if k < 2 or dim < 1 or width < 1 or not dilations or min(dilations) < 1 \
                or n_sources < 1 or hop < 0:
            raise LikelihoodError("a token evidence model needs K >= 2, D, width, sources and "
                                  "dilations >= 1, and a hop >= 0")
        self.n_sources, self.hop = int(n_sources), int(hop)
        self.k, self.dim, self.width = int(k), int(dim), int(width)
        self.dilations = tuple(int(d) for d in dilations)
        self.meta = dict(meta or {})
        self.inp = nn.Conv1d(dim + self.hop, width, 5, padding=2)
        self.blocks = nn.ModuleList([nn.Conv1d(width, width, 3, padding=d, dilation=d)
                                     for d in self.dilations])
        self.norms = nn.ModuleList([nn.LayerNorm(width) for _ in self.dilations])
        self.out = nn.Conv1d(width, self.n_sources * k, 1)
        self.register_buffer("log_unigram", torch.full((self.n_sources, k), -math.log(k)))

    @property
    def receptive_field(self) -> int:
        """Steps each side of ``t`` that its output depends on."""
        return 2 + sum(self.dilations)

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.out.weight.device

    def inputs(self, latents: torch.Tensor, wave: torch.Tensor | None = None) -> torch.Tensor:
        """The network's input ``(batch, D + hop, tokens)`` from ``latents: (batch, D,
        tokens)`` and, for a model that reads samples, ``wave: (batch, time)`` the mixture
        whose step ``t`` is samples ``t hop .. (t + 1) hop - 1`` (zero-padded or cut to
        ``tokens * hop``)."""
        if latents.dim() != 3 or latents.shape[1] != self.dim:
            raise LikelihoodError(f"latents must be (batch, {self.dim}, tokens), got "
                                  f"{tuple(latents.shape)}")
        x = latents.to(self.device, torch.float32)
        if not self.hop:
            return x
        if wave is None or wave.dim() != 2 or wave.shape[0] != latents.shape[0]:
            raise LikelihoodError("this token evidence model reads the mixture's samples: "
                                  "give wave (batch, time)")
        b, t = latents.shape[0], latents.shape[2]
        w = wave.to(self.device, torch.float32)[:, : t * self.hop]
        w = F.pad(w, (0, t * self.hop - w.shape[1]))
        return torch.cat([x, w.view(b, t, self.hop).transpose(1, 2)], 1)

    def forward(self, latents: torch.Tensor, wave: torch.Tensor | None = None) -> torch.Tensor:
        """``latents: (batch, D, tokens)`` (and ``wave: (batch, time)`` when the model reads
        samples, see :meth:`inputs`) -> ``(batch, tokens, N, K)`` ``log q_s(k | h)``."""
        h = F.gelu(self.inp(self.inputs(latents, wave)))
        for conv, norm in zip(self.blocks, self.norms, strict=True):
            h = h + F.gelu(conv(norm(h.transpose(1, 2)).transpose(1, 2)))
        logits = self.out(h)  # (batch, N K, tokens)
        b, _, t = logits.shape
        return logits.view(b, self.n_sources, self.k, t).permute(0, 3, 1, 2).log_softmax(-1)

    def evidence(self, latents: torch.Tensor, wave: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """``latents: (batch, D, tokens)`` (and ``wave``, see :meth:`inputs`) -> ``(batch,
        tokens, N, K)`` log-ratios ``log q_s(k | h) - log u_s(k)``."""
        return self(latents, wave) - self.log_unigram[None, None]

    def window(self, latents: torch.Tensor, block: int = 512,
               wave: torch.Tensor | None = None) -> Callable[[int, int], torch.Tensor]:
        """``evidence(a, b) -> (batch, b - a, N, K)`` for steps ``a .. b - 1`` of ``latents:
        (batch, D, tokens)`` (and of the mixture ``wave: (batch, time)`` for a model that
        reads samples), each step computed from the steps within its receptive field:
        the ``token_evidence`` of :func:`lass.sampling.separate_tokens`. Steps are computed
        ``block`` at a time (at least ``b - a``) from ``a`` on, and the last block is kept
        for the calls after it: a search asks for a few dozen steps at a time, and each
        computation also reads the receptive field on both sides and pays every
        convolution's fixed cost."""
        r, n = self.receptive_field, latents.shape[2]
        held: list[Any] = [0, 0, None]  # the block kept: first step, end, its evidence

        @torch.no_grad()
        def at(a: int, b: int) -> torch.Tensor:
            first, end, kept = held
            if kept is None or a < first or b > end:
                first, end = a, min(n, max(b, a + block))
                lo, hi = max(0, first - r), min(n, end + r)
                part = None if wave is None else wave[:, lo * self.hop: hi * self.hop]
                kept = self.evidence(latents[:, :, lo:hi], part)[:, first - lo: end - lo]
                held[:] = [first, end, kept]
            return kept[:, a - first: b - first]

        return at

    def check_codec(self, codebook_size: int, dim: int, codec_identity: str | None,
                    hop: int | None = None) -> None:
        """Raise :class:`LikelihoodError` unless the model was trained for this codec (of
        hop ``hop``, when given and the model reads samples)."""
        if codebook_size != self.k or dim != self.dim:
            raise LikelihoodError(f"the token evidence model is for K = {self.k}, D = "
                                  f"{self.dim}; the codec has K = {codebook_size}, D = {dim}")
        if self.hop and hop is not None and hop != self.hop:
            raise LikelihoodError(f"the token evidence model reads hops of {self.hop} samples; "
                                  f"the codec's hop is {hop}")
        stored = self.meta.get("codec_identity")
        if codec_identity and stored and stored != codec_identity:
            raise LikelihoodError(f"the token evidence model was trained with another codec "
                                  f"(identity {str(stored)[:12]}, this codec "
                                  f"{codec_identity[:12]})")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model to an ``.npz`` atomically."""
        arrays = {name: value.detach().cpu().numpy()
                  for name, value in self.state_dict().items()}
        meta = {**self.meta, "format_version": FORMAT_VERSION, "kind": KIND, "k": self.k,
                "dim": self.dim, "width": self.width, "dilations": list(self.dilations)}
        if self.n_sources != 2:
            meta["n_sources"] = self.n_sources
        if self.hop:
            meta["hop"] = self.hop
        return save_model_file(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu"
             ) -> TokenEvidence:
        """Read a file written by :meth:`save` (eval mode, on ``device``)."""
        shell = _read_meta(path)
        names = tuple(shell.state_dict())
        p, arrays, meta = load_model_file(path, "token evidence model", KIND, FORMAT_VERSION,
                                          names)
        model = cls(int(meta["k"]), int(meta["dim"]), int(meta["width"]),
                    tuple(meta["dilations"]), {k: v for k, v in meta.items() if k not in (
                        "format_version", "kind", "k", "dim", "width", "dilations",
                        "n_sources", "hop")}, int(meta.get("n_sources", 2)),
                    int(meta.get("hop", 0)))
        try:
            model.load_state_dict(arrays, strict=True)
        except RuntimeError as err:
            raise LikelihoodError(f"{p}: weights do not fit the model ({err})") from None
        return model.to(device).eval()


def _read_meta(path: str | os.PathLike[str]) -> TokenEvidence:
    """An untrained model of the size a saved file's metadata gives (to name its arrays)."""
    _p, _arrays, meta = load_model_file(path, "token evidence model", KIND, FORMAT_VERSION, ())
    try:
        return TokenEvidence(int(meta["k"]), int(meta["dim"]), int(meta["width"]),
                             tuple(int(d) for d in meta["dilations"]),
                             n_sources=int(meta.get("n_sources", 2)),
                             hop=int(meta.get("hop", 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise LikelihoodError(f"{path}: bad token evidence metadata ({err})") from None


def log_unigrams(sources: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """``(N, K)`` add-one log frequencies of the N sources' tokens, each ``(n, tokens)``."""
    counts = torch.stack([torch.bincount(x.reshape(-1), minlength=k).double() + 1.0
                          for x in sources])
    return (counts / counts.sum(1, keepdim=True)).log().float()


def evidence_bits(model: TokenEvidence, sources: Sequence[torch.Tensor],
                  latents: torch.Tensor, batch: int = 32, waves: torch.Tensor | None = None
                  ) -> dict[str, list[float]]:
    """Held-out cross-entropy (bits per token) and top-1 / top-10 accuracy per source.

    ``sources``: N tensors ``(n, tokens)``; ``latents: (n, tokens, D)``; ``waves: (n,
    time)`` the mixtures, for a model that reads samples.
    """
    model.eval()
    count = len(sources)
    ce = torch.zeros(count, dtype=torch.float64)
    top1 = torch.zeros(count, dtype=torch.float64)
    top10 = torch.zeros(count, dtype=torch.float64)
    with torch.no_grad():
        for lo in range(0, sources[0].shape[0], batch):
            lp = model(latents[lo: lo + batch].transpose(1, 2),
                       None if waves is None else waves[lo: lo + batch])  # (b, T, N, K)
            target = torch.stack([x[lo: lo + batch] for x in sources], 2)
            true = lp.gather(-1, target.to(lp.device)[..., None])
            rank = (lp > true).sum(-1)  # (b, T, N)
            ce -= true.squeeze(-1).double().sum((0, 1)).cpu()
            top1 += (rank == 0).double().sum((0, 1)).cpu()
            top10 += (rank < 10).double().sum((0, 1)).cpu()
    n = max(1, sources[0].numel())
    return {"bits": (ce / n / math.log(2)).tolist(), "top1": (top1 / n).tolist(),
            "top10": (top10 / n).tolist()}


class EvidenceTrainer:
    """Cross-entropy training of a :class:`TokenEvidence` on encoded mixtures, one epoch at
    a time, resumable exactly (model, AdamW, one-cycle schedule, epoch and shuffling seed).

    Args:
        model: the network (its ``log_unigram`` is set from the training tokens).
        sources: N tensors ``(n, tokens)``, the sources' tokens; latents ``(n, tokens, D)``.
        waves: ``(n, time)`` the mixtures, for a model that reads samples.
        epochs: passes over the mixtures; batch: mixtures per step; lr: peak learning rate.
        seed: seed of each epoch's shuffling (epoch ``e`` uses ``seed + e``).
        bf16: bf16 autocast of the network (``None``: on CUDA only; the loss in float32).
        shard: ``(rank, world)`` under torchrun: each step's batch is the same on every rank
            and this rank trains on its contiguous ``batch / world`` mixtures (the caller
            sets :attr:`network` to a DistributedDataParallel of the model, which averages
            the gradients), so a step is that of one process on the whole batch.
    """

    def __init__(self, model: TokenEvidence, sources: Sequence[torch.Tensor],
                 latents: torch.Tensor, epochs: int, batch: int = 16, lr: float = 2e-3,
                 seed: int = 0, shard: tuple[int, int] = (0, 1), bf16: bool | None = None,
                 waves: torch.Tensor | None = None) -> None:
        if epochs < 1 or batch < 1 or not lr > 0:
            raise LikelihoodError("epochs, batch and lr must be positive")
        if len(sources) != model.n_sources:
            raise LikelihoodError(f"the model predicts {model.n_sources} sources, the data has "
                                  f"{len(sources)}")
        first = sources[0]
        if any(x.shape != first.shape for x in sources) or latents.shape[:2] != first.shape:
            raise LikelihoodError("tokens must be (n, tokens) and latents (n, tokens, D)")
        if model.hop and (waves is None or waves.shape[0] != first.shape[0]):
            raise LikelihoodError("this model reads the mixtures' samples: give waves (n, time)")
        self.model, self.sources, self.latents = model, list(sources), latents
        self.waves = waves if model.hop else None
        self.epochs, self.batch, self.seed = epochs, min(batch, first.shape[0]), seed
        rank, world = shard
        if self.batch % world:
            raise LikelihoodError(f"a batch of {self.batch} mixtures does not divide among "
                                  f"{world} processes")
        share = self.batch // world
        self.share = slice(rank * share, (rank + 1) * share)
        self.network: torch.nn.Module = model
        self.bf16 = bf16 if bf16 is not None else model.device.type == "cuda"
        model.log_unigram.copy_(log_unigrams(sources, model.k))
        self.steps_per_epoch = first.shape[0] // self.batch
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, lr, total_steps=epochs * self.steps_per_epoch, pct_start=0.05)
        self.epoch = 0

    def run_epoch(self, progress: Callable[[int, float], None] | None = None) -> float:
        """One pass; returns its mean training loss (bits per token)."""
        self.model.train()
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.sources[0].shape[0], generator=gen)
        total = 0.0
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch: (step + 1) * self.batch][self.share]
            with torch.autocast(self.model.device.type, dtype=torch.bfloat16,
                                enabled=self.bf16):
                lp = self.network(self.latents[idx].transpose(1, 2),
                                  None if self.waves is None else self.waves[idx]).float()
            target = torch.stack([x[idx] for x in self.sources], 2).to(lp.device)
            loss = -lp.gather(-1, target[..., None]).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            bits = float(loss.detach()) / math.log(2)
            total += bits
            if progress is not None:
                progress(step + 1, bits)
        self.epoch += 1
        self.model.eval()
        return total / max(1, self.steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`load_state_dict` needs to continue exactly."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch = int(state["epoch"])
