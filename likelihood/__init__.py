"""The count-based likelihood table p(z_mix | z_1, z_2).

Planned contents (see DESIGN.md sections 3 and 4): counting token triples over a stem
data set, sparse storage as ``.npz``, merging of shards and per-step slicing.
This package never imports ``lass``, ``vqvae`` or ``priors``.
"""
