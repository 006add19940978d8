"""lvdiff: incremental, verifiable block-level replication of LVM2 thin volumes.

The package is a library first; the ``lvdiff`` and ``lvpatch`` commands in
:mod:`lvdiff.cli` are thin layers over :func:`lvdiff.dump.dump` and
:func:`lvdiff.apply.apply_stream`.
"""

__version__ = "0.1.0"
