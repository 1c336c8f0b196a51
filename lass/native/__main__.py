"""``python -m lass.native``: build the search's C++ beam choice for this machine now (the
install command runs it, so that the first separation does not wait for the compiler)."""

import sys

from lass.native import SEARCH, beam_select, native_error

if beam_select() is None:
    print(f"lass.native: the C++ beam choice did not build ({native_error()}); the tensor "
          "code runs instead", file=sys.stderr)
    sys.exit(1)
print(f"lass.native: built in {SEARCH.build_dir()}")
