"""The LVM tags lvdiff and lvpatch put on volumes: one definition of that vocabulary.

Tags live in LVM's own metadata, so they survive crashes and reboots and
``lvs -o+lv_tags`` shows them.  LVM allows ``[A-Za-z0-9_+.-/=!:&#]`` in a tag.
"""

INCOMPLETE = "lvdiff_incomplete"  # on a target until lvpatch commits it
TEMP = "lvdiff_temp"  # on lvdiff's point-in-time snapshots
RESUME_PREFIX = "lvdiff_resume:"  # + resume token: an interrupted target kept for --resume
IDENTITY_PREFIX = "lvdiff_identity:"  # + lineage identity of what a restored volume holds


def with_prefix(tags: list[str], prefix: str) -> list[str]:
    return [t for t in tags if t.startswith(prefix)]
