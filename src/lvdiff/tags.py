"""The LVM tags lvdiff and lvpatch put on volumes: one definition of that vocabulary.

Tags live in LVM's own metadata, so they survive crashes and reboots and
``lvs -o+lv_tags`` shows them.  LVM allows ``[A-Za-z0-9_+.-/=!:&#]`` in a tag.
"""

INCOMPLETE = "lvdiff_incomplete"  # on a target until lvpatch commits it
TEMP = "lvdiff_temp"  # on lvdiff's point-in-time snapshots
RESUME_PREFIX = "lvdiff_resume:"  # + resume token: an interrupted target kept for --resume
IDENTITY_PREFIX = "lvdiff_identity:"  # + lineage identity of what a restored volume holds

# lvsync's (see lvdiff.sync.naming for what each means)
LVSYNC = "lvsync"  # made by lvsync
LVSYNC_SOURCE_PREFIX = "lvsync_src:"  # + <VG UUID>/<LV>: the source, exactly
LVSYNC_JOB_PREFIX = "lvsync_to:"  # + a job's key: on source snapshots, the job they serve
LVSYNC_HOST_PREFIX = "lvsync_host:"  # + <host>/<VG>: for people only
LVSYNC_LEGACY_PREFIX = "lvsync_source:"  # + <LV>: before sources were unique


def with_prefix(tags: list[str], prefix: str) -> list[str]:
    return [t for t in tags if t.startswith(prefix)]
