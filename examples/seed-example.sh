#!/bin/bash
# The original lvdiff README's example, typos fixed, on two loop devices:
# back up vg0/vol0 (mounted, in use) against its snapshot sp0, then restore it
# on vg1 from a volume equal to sp0, and read the hello file back.
# Runs inside rig/env.sh (private loop-only LVM config, images on a tmpfs).
set -euo pipefail
# LVDIFF_BIN=/usr/bin runs the installed package's tools instead of the checkout's
export PATH=${LVDIFF_BIN:-$PWD/.venv/bin}:$PATH
img=${LVDIFF_RIG_IMAGES:?run me through rig/run.py}
step() { printf '\n$ %s\n' "$*"; "$@"; }

rm -f "$img/test.diff" "$img/test.diff.sha256" "$img/lvdiff.err"  # a clean scratch area
truncate -s 1G "$img/1G.disk.0" "$img/1G.disk.1"
loop0=$(losetup -f --show "$img/1G.disk.0")
loop1=$(losetup -f --show "$img/1G.disk.1")
cleanup() {
    local rc=$?
    set +e
    umount "$img/mnt/vg0/vol0" "$img/mnt/vg1/vol0" 2>/dev/null
    vgremove -q -ff -y vg0 vg1 >/dev/null 2>&1
    losetup -d "$loop0" "$loop1"
    rm -f "$img/1G.disk.0" "$img/1G.disk.1" "$img/test.diff" "$img/test.diff.sha256" \
        "$img/lvdiff.err"
    exit "$rc"
}
trap cleanup EXIT

echo "== lvdiff side (vg0 on $loop0)"
step pvcreate -q "$loop0"
step vgcreate -q vg0 "$loop0"
step lvcreate -q --thinpool vg0/pool0 -l 100%FREE
step lvcreate -q -T vg0/pool0 -V 500M -n vol0
step lvcreate -q -s -n sp0 vg0/vol0           # the base: vol0 before any data
step mkfs.ext4 -q /dev/vg0/vol0
mkdir -p "$img/mnt/vg0/vol0" "$img/mnt/vg1/vol0"
step mount /dev/vg0/vol0 "$img/mnt/vg0/vol0"
echo "hello world" >"$img/mnt/vg0/vol0/hello"
cd "$img"
# as the README types it; its digest line goes to stderr, kept here to check the file by
printf '\n$ %s\n' "lvdiff -g vg0 --pair 'Author:BigVan (alpc_metic@live.com)' --pair 'Message: hello world' sp0 vol0 > test.diff"
lvdiff -g vg0 --pair 'Author:BigVan (alpc_metic@live.com)' --pair 'Message: hello world' \
    sp0 vol0 >test.diff 2>lvdiff.err
cat lvdiff.err
grep '^SHA256 (test.diff) = ' lvdiff.err >test.diff.sha256
step sha256sum test.diff
step sha256sum -c test.diff.sha256
umount "$img/mnt/vg0/vol0"

echo
echo "== lvpatch side (vg1 on $loop1)"
step pvcreate -q "$loop1"
step vgcreate -q vg1 "$loop1"
step lvcreate -q --thinpool vg1/pool0 -l 100%FREE
step lvcreate -q -T vg1/pool0 -V 500M -n sp0
printf '\n$ %s\n' "cat test.diff | lvpatch -g vg1 -l sp0"
cat test.diff | lvpatch -g vg1 -l sp0
step lvs -o lv_name,lv_attr,lv_size,pool_lv,origin,lv_tags vg1
step mount /dev/vg1/vol0 "$img/mnt/vg1/vol0"      # read-only: it stays the copy of vol0
printf '\n$ cat hello   # on the restored vg1/vol0\n'
cat "$img/mnt/vg1/vol0/hello"
grep -qx "hello world" "$img/mnt/vg1/vol0/hello"
umount "$img/mnt/vg1/vol0"
echo
echo "restored vg1/vol0 holds the hello file"
