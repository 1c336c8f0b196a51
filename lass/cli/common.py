"""Small helpers shared by the training commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lass.errors import LassError


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when present, else ``cpu``; an unknown device, or one this machine
    lacks (CUDA, MPS), is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = name.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise LassError(f"unknown --device {name!r}; expected auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise LassError("--device cuda asked for, but no CUDA device is available")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise LassError("--device mps asked for, but this PyTorch has no MPS device")
    if kind == "cuda" and ":" in name:
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise LassError(f"--device {name}: no such CUDA device "
                            f"({torch.cuda.device_count()} present)")
    return name


def start_run(out: Path, resume: bool, threads: int, device: str) -> str:
    """Set the CPU threads, refuse to overwrite a run without ``--resume``; return the device."""
    if threads > 0:
        torch.set_num_threads(threads)
    if (out / "trainer.pt").is_file() and not resume:
        raise LassError(f"{out} already holds a training run; pass --resume or choose another "
                        "--out")
    return resolve_device(device)


def add_precision_option(p: argparse.ArgumentParser) -> None:
    """``--precision``: ``auto`` (bf16 autocast on CUDA, float32 on the CPU), ``fp32`` or
    ``bf16`` (also on the CPU)."""
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA, float32 on the CPU")


def use_bf16(precision: str, device: str) -> bool:
    """Whether ``--precision`` asks for bf16 autocast on ``device``."""
    return precision == "bf16" or (precision == "auto" and device.startswith("cuda"))


def dataset_mix_rule(data: Path, override: str | None) -> str:
    """The mixing rule: ``override``, else the data set's ``dataset.json``, else ``mean``."""
    if override:
        return override
    meta = data / "dataset.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text(encoding="utf-8")).get("mix", "mean"))
        except (OSError, ValueError):
            pass
    return "mean"
