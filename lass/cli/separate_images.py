"""The image half of ``lass-separate``: PNG mixtures in, ``source_1.png``, ``source_2.png``
and ``separation.json`` out, for a bundle whose method is ``image`` (``-m mnist``).

Inputs are files, folders (their PNG files) or globs. Each is read as 8-bit grey (other
modes are converted), separated at the codec's size in batches, and its two sources are
written at the input's size, each at source scale (their mean is the input, up to 8-bit
rounding), into ``OUT/<bundle>/<name>/`` (written aside, then renamed into place). A bad
input is reported in one line and skipped; the exit status is then non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lass.cli import EXIT_ERROR
from lass.errors import DataError, LassError
from lass.images import ImageSeparator, png_bytes, read_png
from vqvae.files import write_dir_atomically

IMAGE_SUFFIXES = (".png", ".pgm", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
#: Mixtures searched as one batch (a 28 x 28 mixture is small: large batches are fastest).
IMAGE_BATCH = 256


def _write_item(folder: Path, sources: np.ndarray, info: dict[str, Any],
                stems: tuple[str, ...]) -> None:
    """``folder/<stem>.png`` for each source and ``separation.json``, all at once."""

    def fill(tmp: Path) -> None:
        for stem, image in zip(stems, sources, strict=True):
            (tmp / f"{stem}.png").write_bytes(png_bytes(image))
        (tmp / "separation.json").write_text(json.dumps(info, indent=1) + "\n")

    write_dir_atomically(folder, fill)


def separate_images(args: argparse.Namespace, prog: str, device: str) -> int:
    """Run ``lass-separate`` for an image bundle (``args`` as parsed by lass-separate)."""
    from lass.cli.separate import expand_inputs, track_folders

    t0 = time.perf_counter()
    separator = ImageSeparator.from_pretrained(args.model, device=device,
                                               verify=not args.no_verify)
    load_seconds = time.perf_counter() - t0
    files, missing = expand_inputs(args.inputs, IMAGE_SUFFIXES)
    failures = len(missing)
    for item in missing:
        print(f"{prog}: error: no image file at {item}", file=sys.stderr)
    if not files:
        raise DataError("nothing to separate")
    folders = track_folders(files)
    bundle = separator.bundle
    name = bundle.name if bundle is not None else "bundle"
    root = args.out / name
    batch = args.batch if args.batch is not None else IMAGE_BATCH
    done = 0
    for lo in range(0, len(files), batch):
        loaded: list[tuple[Path, np.ndarray]] = []
        for path in files[lo: lo + batch]:
            try:
                image = read_png(path)
                if float(image.max()) <= 0.0:
                    raise DataError(f"{path} is black: nothing to separate")
                loaded.append((path, image))
            except LassError as err:
                print(f"{prog}: error: {err}", file=sys.stderr)
                failures += 1
        if not loaded:
            continue
        start = time.perf_counter()
        results = separator.separate_many([im for _, im in loaded], batch=batch)
        seconds = (time.perf_counter() - start) / len(loaded)
        for (path, image), sources in zip(loaded, results, strict=True):
            info = {"input": str(path), "height": int(image.shape[0]),
                    "width": int(image.shape[1]), "stems": list(separator.stems),
                    "mix": "mean",
                    "bundle": {"name": name, "path": str(bundle.root) if bundle else None,
                               "sha256": bundle.sha256 if bundle else None},
                    "settings": {"method": "image", **separator.settings.to_json()},
                    "device": device,
                    "timings": {"separate": round(seconds, 4),
                                "load_models": round(load_seconds, 4)}}
            try:
                _write_item(root / folders[path], sources, info, separator.stems)
                done += 1
            except OSError as err:
                print(f"{prog}: error: {path}: {err}", file=sys.stderr)
                failures += 1
    print(f"separated {done} of {len(files)} images into {root}")
    return EXIT_ERROR if failures else 0
