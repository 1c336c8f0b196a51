"""Reconstruction losses for codec training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes of a data-parallel run (differentiably: the gradient
    of each rank's share is kept); ``x`` itself in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist_fn.all_reduce(x)
    return x


def stft_magnitude(wave: torch.Tensor, n_fft: int) -> torch.Tensor:
    """``wave: (batch, time)`` -> ``(batch, n_fft // 2 + 1, frames)`` magnitudes (Hann, hop n/4)."""
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
    return spec.abs()


def multi_resolution_stft_loss(est: torch.Tensor, ref: torch.Tensor,
                               ffts: Sequence[int] = (256, 512, 1024, 2048),
                               eps: float = 1e-5) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + L1 of log magnitudes.

    ``est``, ``ref``: ``(batch, time)``. Resolutions longer than ``time`` are left out.
    Returns a scalar. Under torchrun the spectral convergence's norms are summed over the
    ranks' shares of the batch (so it is that of the whole batch); the L1 term is a mean,
    which the averaging of gradients makes global.
    """
    sizes = [n for n in ffts if n <= est.shape[-1]]
    if not sizes:
        raise ValueError(f"signals of {est.shape[-1]} samples are shorter than every FFT size")
    total = est.new_zeros(())
    for n in sizes:
        s_est, s_ref = stft_magnitude(est, n), stft_magnitude(ref, n)
        err = _sum_over_ranks((s_ref - s_est).pow(2).sum())
        energy = _sum_over_ranks(s_ref.pow(2).sum().detach())
        convergence = err.sqrt() / energy.sqrt().clamp_min(eps)
        log_mag = (torch.log(s_est + eps) - torch.log(s_ref + eps)).abs().mean()
        total = total + convergence + log_mag
    return total / len(sizes)


def normalised_mse(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``sum (ref - est)^2 / sum ref^2`` per item, averaged: ``10**(-SDR/10)``; a scalar."""
    err = (ref - est).pow(2).sum(-1)
    return (err / ref.pow(2).sum(-1).clamp_min(eps)).mean()


def sdr_db(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Plain SDR ``10 log10(sum s^2 / sum (s - s_hat)^2)`` per item: ``(batch,)`` in dB."""
    num = ref.pow(2).sum(-1)
    den = (ref - est).pow(2).sum(-1)
    return 10 * torch.log10((num + eps) / (den + eps))
