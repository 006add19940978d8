#!/bin/bash
# Prepare a private, loop-device-only LVM environment and run a command in it.
#
# Used inside the throwaway VM (whose root is the host's filesystem, read-only)
# and directly on a server whose kernel has dm-thin. Everything it creates lives
# on a tmpfs and in a private LVM_SYSTEM_DIR, so no host disk is ever scanned.
#
# usage: rig/env.sh RESULTS_DIR COMMAND [ARGS...]
set -u
results=$1
shift
here=$(cd "$(dirname "$0")" && pwd)

modprobe -a loop dm-mod dm-thin-pool dm-flakey 2>/dev/null || modprobe -a loop dm-mod dm-thin-pool || {
    echo "rig: cannot load loop/dm-thin-pool modules" >&2
    exit 97
}

work=$(mktemp -d /run/lvdiff-rig.XXXXXX)
mkdir -p "$work/lvm" "$work/images"
cp "$here/lvm.conf" "$work/lvm/lvm.conf"
mount -t tmpfs -o size=${LVDIFF_RIG_TMPFS:-2G} lvdiff-rig "$work/images" || exit 97

export LVM_SYSTEM_DIR=$work/lvm
export DM_DISABLE_UDEV=1
export LVM_SUPPRESS_FD_WARNINGS=1
export LVDIFF_RIG_IMAGES=$work/images
export PYTHONDONTWRITEBYTECODE=1

binds=()
# In the VM, run Python and the project from a RAM copy the host packed (see run.py):
# the root filesystem is 9p without caching, and imports are most of a tool's start.
if [ -n "${LVDIFF_RIG_BUNDLE:-}" ]; then
    mkdir -p "$work/ram"
    mount -t tmpfs -o size=1G lvdiff-ram "$work/ram" &&
        tar -xf "$LVDIFF_RIG_BUNDLE" -C "$work/ram" || echo "rig: no RAM copy of Python" >&2
    IFS=: read -r -a binds <<<"${LVDIFF_RIG_BIND:-}"
    for path in "${binds[@]}"; do
        [ -e "$work/ram$path" ] && mount --bind "$work/ram$path" "$path"
    done
    unset PYTHONDONTWRITEBYTECODE  # the copies are writable: cache what was not compiled
fi


"$@"
rc=$?

# Leave nothing behind, on a real server too: take down what the tests stacked on
# our images (and only that), then the tmpfs itself.
for path in "${binds[@]}"; do
    umount -l "$path"
done
[ -d "$work/ram" ] && umount -l "$work/ram"
python3 "$here/teardown.py" "$work/images"
if umount "$work/images"; then
    rm -rf "$work"
else
    echo "rig: WARNING: $work/images is still busy; devices left:" >&2
    losetup -l >&2
    dmsetup ls >&2
fi
echo "$rc" >"$results/exit-status"
exit "$rc"
