#!/bin/bash
# The fixed cost of a run (issue 22): how many external commands each tool starts, and how
# long a run takes when (almost) nothing changed, on a VG holding many thin LVs, in one boot
# of the rig (scripts/bench --rig). Counts do not depend on the machine; under emulation the
# times are the emulator's. Runs inside rig/env.sh: a private loop-only LVM configuration.
#
#   BENCH_RIG_LVS      thin LVs in the source VG (default 500)
#   BENCH_RIG_VOLUMES  of them, the volumes one lvsync run sends (default 100)
set -euo pipefail
export PATH=$PWD/.venv/bin:$PATH
img=${LVDIFF_RIG_IMAGES:?run me through rig/run.py}
lvs_total=${BENCH_RIG_LVS:-500}
volumes=${BENCH_RIG_VOLUMES:-100}

# Every start of an LVM, device-mapper or thin_delta command is logged by a wrapper first
# on PATH, which then runs the real one: nothing in lvdiff counts itself.
wrap=$img/counting
log=$img/commands.log
mkdir -p "$wrap"
for name in lvs vgs lvcreate lvchange lvremove lvresize dmsetup lvm thin_delta; do
    real=$(command -v "$name")
    printf '#!/bin/sh\necho "%s $*" >> %s\nexec %s "$@"\n' "$name" "$log" "$real" >"$wrap/$name"
    chmod +x "$wrap/$name"
done
counted() {  # label, command...: run it with the wrappers; print its count and time
    local label=$1 start end n
    shift
    rm -f "$log"
    start=$(date +%s.%N)
    PATH=$wrap:$PATH "$@" >/dev/null 2>"$img/err" || [ $? = 3 ] || {
        cat "$img/err" >&2
        exit 1
    }
    end=$(date +%s.%N)
    n=$(wc -l <"$log")
    printf '  %-46s %5d commands  %8.1f s   %s\n' "$label" "$n" "$(echo "$end - $start" | bc)" \
        "$(cut -d' ' -f1 "$log" | sort | uniq -c | awk '{printf "%s %s, ", $2, $1}')"
}

truncate -s 6G "$img/counts-src.img" "$img/counts-dst.img"
src_loop=$(losetup -f --show "$img/counts-src.img")
dst_loop=$(losetup -f --show "$img/counts-dst.img")
vgcreate -q -s 4m lvdcount "$src_loop" >/dev/null 2>&1
vgcreate -q -s 4m lvdcountdst "$dst_loop" >/dev/null 2>&1
lvcreate -q --type thin-pool -L 2g -n pool lvdcount >/dev/null 2>&1
lvcreate -q --type thin-pool -L 2g -n pool lvdcountdst >/dev/null 2>&1
echo "== the fixed cost of a run: $volumes volumes sent from a VG of $lvs_total thin LVs"
start=$(date +%s)
# one lvm shell for all of them: a start of the lvm binary per LV would take most of the boot
for i in $(seq 1 "$lvs_total"); do
    echo "lvcreate -q -T lvdcount/pool -V 4m -n lv$i"
done | lvm >/dev/null 2>&1
echo "  made $lvs_total thin LVs in $(($(date +%s) - start)) s"
for i in $(seq 1 "$volumes"); do
    dd if=/dev/urandom of="/dev/lvdcount/lv$i" bs=64k count=4 conv=fsync status=none
done
sources=()
for i in $(seq 1 "$volumes"); do sources+=("lvdcount/lv$i"); done

lvcreate -q -s -n base lvdcount/lv1 >/dev/null 2>&1
dd if=/dev/urandom of=/dev/lvdcount/lv1 bs=64k count=1 seek=8 conv=fsync status=none
lvcreate -q -s -n new lvdcount/lv1 >/dev/null 2>&1
counted "lvdiff BASE NEW (two inactive snapshots)" lvdiff lvdcount/base lvdcount/new
counted "lvdiff BASE NEW, again" lvdiff lvdcount/base lvdcount/new
counted "lvdiff NEW (full)" lvdiff lvdcount/new
counted "lvdiff of an active writable volume (full)" lvdiff lvdcount/lv3
lvdiff lvdcount/new >"$img/full.lvd" 2>/dev/null
counted "lvpatch (full)" lvpatch -g lvdcountdst -p pool -i "$img/full.lvd" restored
counted "lvsync, 1 volume, first run (full)" lvsync lvdcount/lv1 lvdcountdst
counted "lvsync, 1 volume, nothing changed" lvsync lvdcount/lv1 lvdcountdst
dd if=/dev/urandom of=/dev/lvdcount/lv1 bs=64k count=1 seek=2 conv=fsync status=none
counted "lvsync, 1 volume, changed (incremental)" lvsync lvdcount/lv1 lvdcountdst
counted "lvsync, $volumes volumes, first run (full)" lvsync "${sources[@]}" lvdcountdst
counted "lvsync, $volumes volumes, nothing changed" lvsync "${sources[@]}" lvdcountdst
dd if=/dev/urandom of=/dev/lvdcount/lv2 bs=64k count=1 conv=fsync status=none
counted "lvsync, $volumes volumes, one changed" lvsync "${sources[@]}" lvdcountdst

vgremove -q -ff -y lvdcount lvdcountdst >/dev/null 2>&1
losetup -d "$src_loop" "$dst_loop"
