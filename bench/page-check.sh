#!/usr/bin/env bash
# What checking every restored page against its crc32 costs a recovery,
# measured in one run on the real guest (Debian's cloud kernel + busybox,
# examples/phase-guest/guest-init.sh) under QEMU 10 (scripts/fetch-qemu10).
#
#   bench/page-check.sh [--mem MB] [--runs N] [--before PBR_IMG]
#
# Captures the classified, trimmed `daemons` candidate, unpacks it flat,
# then times N recoveries of each (pbr-img recover --json, spawn, median):
#   - streamed: each page is checked as it is written into QEMU's stream,
#     beside QEMU's load; the check's own cost is the crc32 of every stored
#     page, measured alone (pbr-img verify --pages, median of N), an upper
#     bound of what it adds;
#   - flat (RAM mapped): the pages QEMU maps are checked while QEMU starts
#     (page_check_s, on the restore's path).
# Each against the restore phase (restore_s: QEMU's start and load) and the
# whole recovery (downtime_s). The goal is under 5% of the restore. With
# --before, the same recoveries are also made, interleaved, by another
# pbr-img (one built from a commit before the check) and its restore_s is
# printed beside: the check's cost as the restore sees it.
# The last line: "page check: streamed X ms = P% of the restore, flat Y ms
# = Q% of the restore".
set -euo pipefail
cd "$(dirname "$0")/.."
runs=9
mem=256
before=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --before) before="$2"; shift 2 ;;
        *) echo "usage: bench/page-check.sh [--mem MB] [--runs N] [--before PBR_IMG]" >&2; exit 2 ;;
    esac
done
command -v qemu-system-x86_64 >/dev/null || { echo "needs QEMU 7.2 on PATH (scripts/test puts it there)" >&2; exit 2; }
cargo build --release -q -p pbr-img
pbr="$(scripts/target-dir)/release/pbr-img"
qemu10="$(scripts/fetch-qemu10 2>/dev/null)"
read -r kernel initrd < <(scripts/fetch-guest 2>/dev/null)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(round(d[k] * 1000, 3)) for k in sys.argv[1:]))" "$@"; }

# The versioned machine type, so that QEMU 10 loads QEMU 7.2's streams.
machine="$(qemu-system-x86_64 -machine help | awk '$1 == "q35" { sub(/.*alias of /, ""); sub(/\).*/, ""); print }')"
$pbr -q capture --kernel "$kernel" --initrd "$initrd" --append "console=ttyS0 pbr.data=1 pbr.anon=1 pbr.kpf=1" \
    --mem "$mem" --machine "$machine,accel=tcg" -o "$work/cap" > /dev/null
streamed="$work/cap/daemons.pbr"
flat="$work/flat.pbr"
$pbr -q unpack --flat "$streamed" -o "$flat" > /dev/null
for _ in $(seq "$runs"); do
    $pbr recover --qemu "$qemu10" --json "$streamed" | field restore_s downtime_s >> "$work/streamed.ms"
    $pbr recover --qemu "$qemu10" --json "$flat" | field restore_s downtime_s page_check_s >> "$work/flat.ms"
    $pbr verify --pages --json "$streamed" | field check_s >> "$work/check.ms"
    if [ -n "$before" ]; then
        "$before" recover --qemu "$qemu10" --json "$streamed" | field restore_s downtime_s >> "$work/streamed-before.ms"
        "$before" recover --qemu "$qemu10" --json "$flat" | field restore_s downtime_s >> "$work/flat-before.ms"
    fi
done
col() { cut -d' ' -f"$1" < "$2" | median; }
stored=$($pbr inspect --json "$streamed" | python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['pages']['stored_pages'] * 4096 / 1048576, 1))")
s_restore=$(col 1 "$work/streamed.ms"); s_down=$(col 2 "$work/streamed.ms"); s_check=$(col 1 "$work/check.ms")
f_restore=$(col 1 "$work/flat.ms"); f_down=$(col 2 "$work/flat.ms"); f_check=$(col 3 "$work/flat.ms")
pct() { python3 -c "print(round(100 * $1 / $2, 1))"; }
echo "$mem MiB guest, daemons candidate with $stored MiB of stored pages, medians of $runs:"
echo "  streamed: restore $s_restore ms, recovery $s_down ms; crc32 of every stored page alone $s_check ms ($(pct "$s_check" "$s_restore")% of the restore, $(pct "$s_check" "$s_down")% of the recovery)"
echo "  flat:     restore $f_restore ms, recovery $f_down ms; page check beside QEMU's start and load $f_check ms ($(pct "$f_check" "$f_restore")% of the restore, $(pct "$f_check" "$f_down")% of the recovery)"
if [ -n "$before" ]; then
    sb=$(col 1 "$work/streamed-before.ms"); fb=$(col 1 "$work/flat-before.ms")
    echo "  without the check ($before): streamed restore $sb ms, flat restore $fb ms; the check adds $(pct "($s_restore - $sb)" "$sb")% and $(pct "($f_restore - $fb)" "$fb")% to the restore"
fi
echo "page check: streamed $s_check ms = $(pct "$s_check" "$s_restore")% of the restore, flat $f_check ms = $(pct "$f_check" "$f_restore")% of the restore"
