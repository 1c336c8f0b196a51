"""The count-based likelihood table p(z_mix | z_1, ..., z_N).

* :class:`TupleCounter` (two sources: also :class:`TripleCounter`): counts (mixture,
  source-1, ..., source-N) token tuples, sparse and with bounded memory.
* :func:`save_counts` / :func:`load_counts` / :func:`merge_counts`: ``.npz`` counts files
  (shards merge by addition).
* :class:`CountLikelihood`: normalised (and optionally smoothed) ``p(m | i_1, ..., i_N)``, sliced by
  mixture token on the CPU or a GPU.

This package never imports ``lass``, ``vqvae`` or ``priors``.
"""

from likelihood.counting import CounterState, TripleCounter, TupleCounter
from likelihood.errors import LikelihoodError
from likelihood.table import (
    SMOOTHINGS,
    Candidates,
    CountLikelihood,
    Counts,
    load_counts,
    merge_counts,
    save_counts,
)

__all__ = [
    "SMOOTHINGS",
    "Candidates",
    "CountLikelihood",
    "CounterState",
    "Counts",
    "LikelihoodError",
    "TripleCounter",
    "TupleCounter",
    "load_counts",
    "merge_counts",
    "save_counts",
]
