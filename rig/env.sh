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

"$@"
rc=$?

# Leave nothing behind on a real server: detach our loop devices, unmount.
# Only VGs on loop devices backed by our own images are removed.
for img in "$work"/images/*; do
    [ -e "$img" ] || continue
    for loop in $(losetup -n -O NAME -j "$img"); do
        for vg in $(pvs --noheadings -o vg_name "$loop" 2>/dev/null); do
            vgremove -ff -y "$vg" >/dev/null 2>&1
        done
        losetup -d "$loop" 2>/dev/null
    done
done
umount "$work/images" 2>/dev/null
rm -rf "$work"
echo "$rc" >"$results/exit-status"
exit "$rc"
