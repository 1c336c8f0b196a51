"""Command-line entry points: argument parsing and I/O over the library API.

Every command runs through :func:`run_cli`, which turns a :class:`~lass.errors.LassError`
or a package's own user error (bad input, missing file, corrupt
checkpoint, ...) into one ``<prog>: error: <message>`` line on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from lass.errors import LassError
from likelihood.errors import LikelihoodError
from priors.errors import PriorError
from vqvae.errors import CodecError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int],
            argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; report user errors as one line and return the exit status."""
    try:
        return main(argv)
    except (LassError, CodecError, PriorError, LikelihoodError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:  # disk full, permission denied, ...
        print(f"{prog}: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_ERROR
