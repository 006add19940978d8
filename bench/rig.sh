#!/bin/bash
# lvdiff and lvpatch end to end on real thin volumes against dd of the same bytes, in one
# boot of the rig (scripts/bench --rig). Under emulation only the ratios mean anything.
# Runs inside rig/env.sh: a private loop-only LVM configuration, images on a tmpfs.
set -euo pipefail
export PATH=$PWD/.venv/bin:$PATH
img=${LVDIFF_RIG_IMAGES:?run me through rig/run.py}
mib=${BENCH_RIG_MIB:-256}

truncate -s $((mib * 4 + 256))M "$img/bench.img"
loop=$(losetup -f --show "$img/bench.img")
vgcreate -q -s 4m lvdbench "$loop" >/dev/null 2>&1
lvcreate -q --type thin-pool -L $((mib * 3 + 64))m -n pool lvdbench >/dev/null 2>&1
lvcreate -q -T lvdbench/pool -V "${mib}m" -n vol >/dev/null 2>&1
python3 bench/bench.py _mix "$img/mix" $((mib << 20))  # the host benchmark's data mix
dd if="$img/mix" of=/dev/lvdbench/vol bs=4M conv=sparse,fsync status=none  # zeros unmapped
rm "$img/mix"
lvcreate -q -s -n snap lvdbench/vol >/dev/null 2>&1
lvchange -q -ay -K lvdbench/snap 2>/dev/null
lvcreate -q -T lvdbench/pool -V "${mib}m" -n ddtarget >/dev/null 2>&1

t() {  # seconds a command takes, from cold caches
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local start end
    start=$(date +%s.%N)
    bash -o pipefail -c "$1" >/dev/null 2>&1 || { echo "bench: failed: $1" >&2; exit 1; }
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}
ratio() {  # name, ours, theirs
    printf '  %-32s ours %7.2f s  theirs %7.2f s  ratio %5.2f   (%s)\n' \
        "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)" "$4"
}
snap=/dev/lvdbench/snap
echo "== real thin volumes, $mib MiB (mixed data), in the rig"
ours=$(t "lvdiff lvdbench/snap > /dev/null")
theirs=$(t "dd if=$snap bs=4M status=none | zstd -3 -T0 -q | sha256sum")
ratio "lvdiff, zstd -3" "$ours" "$theirs" "dd | zstd -3 -T0 | sha256sum"
ours=$(t "lvdiff --compress none lvdbench/snap > /dev/null")
theirs=$(t "dd if=$snap of=/dev/null bs=4M status=none")
ratio "lvdiff, no compression" "$ours" "$theirs" "dd of=/dev/null"
lvdiff lvdbench/snap >"$img/stream.lvd" 2>/dev/null
ours=$(t "lvpatch -g lvdbench -p pool restored < $img/stream.lvd")
theirs=$(t "dd if=$snap of=/dev/lvdbench/ddtarget bs=4M conv=fsync status=none")
ratio "lvpatch, zstd stream" "$ours" "$theirs" "dd into a thin volume"
cmp "$snap" /dev/lvdbench/restored && echo "  restored volume is bit-exact"
vgremove -q -ff -y lvdbench >/dev/null 2>&1
losetup -d "$loop"
