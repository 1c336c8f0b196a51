"""``python -m priors.native``: build the C++ prior step for this machine now (the install
command runs it, so that the first separation does not wait for the compiler)."""

import sys

from priors.native import build_dir, native_error, native_step

if native_step() is None:
    print(f"priors.native: the C++ step did not build ({native_error()}); the TorchScript "
          "step runs instead", file=sys.stderr)
    sys.exit(1)
print(f"priors.native: built in {build_dir()}")
