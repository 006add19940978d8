"""lvsync: nightly replication of thin volumes as one command, on the lvdiff library.

What syncoid and sanoid are to ``zfs send``/``recv``: take a read-only
snapshot, find the newest snapshot both sides share *by identity*, send the
increment (through ssh where the target is remote), resume a cut transfer
by itself, and prune lvsync's own snapshots on both sides by a retention
policy, never the newest common pair.

Modules: :mod:`.naming` (snapshot names and tags), :mod:`.retention`,
:mod:`.targets` (a VG here, a VG over ssh, a directory of streams),
:mod:`.job` (one run), :mod:`.config` (the TOML file).
"""
