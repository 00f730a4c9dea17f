#!/usr/bin/env bash
# Restore without streaming memory, against the streamed restore, measured
# in one run on the real guest (Debian's cloud kernel + busybox,
# examples/phase-guest/guest-init.sh) under QEMU 10 (scripts/fetch-qemu10).
#
#   bench/restore-flat.sh [--runs N]
#
# For a 256 MiB and a 4096 MiB guest of the same content: captures the
# classified, trimmed `daemons` candidate (pbr-img capture), unpacks it
# flat (pbr-img unpack --flat), then times N recoveries of each (pbr-img
# recover, spawn: from the decision until the guest's service answers a
# client on the host, median), interleaved. Then recovers 4 guests from the
# one flat candidate at once and reads their QEMUs' resident memory (RSS
# and PSS from /proc) against one guest's, and where one guest's goes, by
# mapping (/proc/PID/smaps), and the guests' RAM apart from what each QEMU
# holds besides. Also the standby and prestaged ways with the flat
# candidate against the prestaged way with the streamed one, with what
# each QEMU held before the decision.
# The last line: "flat restore: 256 MiB X ms, 4096 MiB Y ms (ratio R), 4
# guests resident A MiB vs 1 guest B MiB".
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        *) echo "usage: bench/restore-flat.sh [--runs N]" >&2; exit 2 ;;
    esac
done
# QEMU 7.2 first on PATH (the system's, or unpacked by scripts/fetch-qemu72).
PATH="$(scripts/fetch-qemu72):$PATH"
cargo build --release -q -p pbr-img
target="$(scripts/target-dir)"
pbr="$target/release/pbr-img"
qemu10="$(scripts/fetch-qemu10 2>/dev/null)"
read -r kernel initrd < <(scripts/fetch-guest 2>/dev/null)
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
append="console=ttyS0 pbr.data=1 pbr.anon=1 pbr.kpf=1"
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ms() { python3 -c "import json,sys; print(round(json.load(sys.stdin)['downtime_s'] * 1000, 1))"; }

# The versioned machine type, so that QEMU 10 loads QEMU 7.2's streams.
machine="$(qemu-system-x86_64 -machine help | awk '$1 == "q35" { sub(/.*alias of /, ""); sub(/\).*/, ""); print }')"

declare -A flat streamed
for mem in 256 4096; do
    $pbr -q capture --kernel "$kernel" --initrd "$initrd" --append "$append" --mem "$mem" \
        --machine "$machine,accel=tcg" -o "$work/cap-$mem" > /dev/null
    $pbr -q unpack --flat "$work/cap-$mem/daemons.pbr" -o "$work/flat-$mem.pbr" > /dev/null
    for _ in $(seq "$runs"); do
        $pbr recover --qemu "$qemu10" --json "$work/flat-$mem.pbr" | ms >> "$work/flat-$mem.ms"
        $pbr recover --qemu "$qemu10" --json "$work/cap-$mem/daemons.pbr" | ms >> "$work/streamed-$mem.ms"
    done
    flat[$mem]=$(median < "$work/flat-$mem.ms")
    streamed[$mem]=$(median < "$work/streamed-$mem.ms")
    echo "$mem MiB: flat ${flat[$mem]} ms, streamed ${streamed[$mem]} ms (median of $runs; candidate $(du -m --apparent-size "$work/cap-$mem/daemons.pbr" | cut -f1) MiB, flat file $(du -m --apparent-size "$work/flat-$mem.pbr" | cut -f1) MiB apparent, $(du -m "$work/flat-$mem.pbr" | cut -f1) MiB allocated)"
done

# QEMU waiting before the decision, 256 MiB: the standby way with the flat
# candidate (RAM mapped, its stream made ready, nothing loaded), the
# prestaged way with it (device state loaded, RAM still only mapped), and
# the prestaged way with the streamed candidate (every page loaded
# beforehand), and the standby way with it (nothing loaded or mapped). Each
# with what its QEMU held before the decision (PSS).
held() { python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['downtime_s'] * 1000, 1), d['held']['pss_kib'] // 1024, d['held']['anon_kib'] // 1024)"; }
for _ in $(seq "$runs"); do
    $pbr recover --standby --qemu "$qemu10" --json "$work/flat-256.pbr" | held >> "$work/standby-flat.ms"
    $pbr recover --prestaged --qemu "$qemu10" --json "$work/flat-256.pbr" | held >> "$work/prestaged-flat.ms"
    $pbr recover --prestaged --qemu "$qemu10" --json "$work/cap-256/daemons.pbr" | held >> "$work/prestaged.ms"
    $pbr recover --standby --qemu "$qemu10" --json "$work/cap-256/daemons.pbr" | held >> "$work/standby.ms"
done
col() { cut -d' ' -f"$1" < "$2" | median; }
# The last, a QEMU waiting for the streamed candidate with nothing loaded,
# is what any QEMU of this command line holds of its own.
for way in standby-flat prestaged-flat prestaged standby; do
    echo "256 MiB, $way: $(col 1 "$work/$way.ms") ms; its QEMU held $(col 2 "$work/$way.ms") MiB before the decision (PSS; $(col 3 "$work/$way.ms") MiB of its own)"
done

# One QEMU's resident memory by kind of mapping, from /proc/PID/smaps.
breakdown() {
    python3 - "$1" <<'PY'
import re, sys
groups = {}
name = None
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        parts = line.split(None, 5)
        path = parts[5].strip() if len(parts) > 5 else ""
        name = ("the image (guest RAM mapped)" if path.endswith(".pbr") else
                "anonymous (QEMU heap, TCG code buffer, ROMs)" if path in ("", "[heap]") or path.startswith("[anon") else
                "QEMU and its libraries" if path.startswith("/") else "other (" + path + ")")
        groups.setdefault(name, {"Pss": 0, "Private_Dirty": 0, "Shared_Clean": 0})
    else:
        k, _, v = line.partition(":")
        if name and k in ("Pss", "Private_Dirty", "Shared_Clean"):
            groups[name][k] += int(v.split()[0])
for n, g in sorted((x for x in groups.items() if x[1]["Pss"] >= 1024), key=lambda x: -x[1]["Pss"]):
    print(f"  1 guest, {n}: PSS {g['Pss'] // 1024} MiB, private dirty {g['Private_Dirty'] // 1024} MiB, shared clean {g['Shared_Clean'] // 1024} MiB")
PY
}

# Resident memory: n guests recovered from the one flat 4 GiB candidate.
resident() {
    local n=$1 qemus=() rss=0 pss=0 ram=0
    pids=()
    for i in $(seq "$n"); do
        $pbr recover --qemu "$qemu10" --keep-running "$work/flat-4096.pbr" > "$work/keep-$i.out" 2>&1 &
        pids+=($!)
    done
    for i in $(seq "$n"); do
        for _ in $(seq 600); do grep -q "recovered from" "$work/keep-$i.out" && break; sleep 0.1; done
    done
    sleep 2
    for p in "${pids[@]}"; do
        for q in $(cat /proc/"$p"/task/*/children 2>/dev/null); do qemus+=("$q"); done
    done
    for q in "${qemus[@]}"; do
        rss=$((rss + $(awk '/^Rss:/ { print $2 }' /proc/"$q"/smaps_rollup)))
        pss=$((pss + $(awk '/^Pss:/ { print $2 }' /proc/"$q"/smaps_rollup)))
        # The guest's RAM: the mapping of the image.
        ram=$((ram + $(awk '/^[0-9a-f]+-[0-9a-f]+ / { img = ($NF ~ /\.pbr$/) } img && /^Pss:/ { s += $2 } END { print s + 0 }' /proc/"$q"/smaps)))
    done
    # Where one guest's memory goes, by mapping.
    [ "$n" = 1 ] && breakdown "${qemus[0]}" >&2
    for q in "${qemus[@]}"; do kill "$q" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
    echo "$((rss / 1024)) $((pss / 1024)) ${#qemus[@]} $((ram / 1024))"
}
read -r rss1 pss1 n1 ram1 < <(resident 1)
read -r rss4 pss4 n4 ram4 < <(resident 4)
echo "resident memory, 4096 MiB guests from one flat candidate: 1 guest RSS $rss1 MiB (PSS $pss1), $n4 guests RSS $rss4 MiB in all (PSS $pss4)"
# Split: the guests' RAM (the image mapping, shared but for the pages each
# guest wrote) and what each QEMU holds besides (its heap, the TCG code
# buffer, its copies of -kernel and -initrd, its libraries' share).
echo "of which guest RAM (the image mapping): 1 guest $ram1 MiB, $n4 guests $ram4 MiB in all (ratio $(python3 -c "print(round($ram4 / max($ram1, 1), 2))")); QEMU besides: 1 guest $((pss1 - ram1)) MiB, $n4 guests $((pss4 - ram4)) MiB in all"
ratio=$(python3 -c "print(round(${flat[4096]} / ${flat[256]}, 2))")
echo "streamed restore: 256 MiB ${streamed[256]} ms, 4096 MiB ${streamed[4096]} ms"
echo "flat restore: 256 MiB ${flat[256]} ms, 4096 MiB ${flat[4096]} ms (ratio $ratio), 4 guests resident $pss4 MiB vs 1 guest $pss1 MiB"
