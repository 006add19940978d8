"""A deduplicating, optionally encrypted repository of backup points; see docs/REPOSITORY.md.

Every object in the store (data chunks, index segments, point manifests) goes in and out
through :mod:`.crypto`'s envelope, which compresses, encrypts and authenticates it under its
own name and kind, and names chunks by a keyed hash so the store learns nothing from names.
"""
