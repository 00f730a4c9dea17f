#!/usr/bin/env bash
# Phase-based reboot against a normal reboot, on a real Linux guest (Debian's
# cloud kernel + busybox, examples/phase-guest/guest-init.sh) under QEMU.
#
#   bench/phase-reboot.sh [--mem MB] [--runs N]
#
# For each guest size (256, 1024 and 4096 MiB unless --mem is given):
# captures classified, trimmed candidates at the `kernel` and `daemons`
# phases (pbr-img capture), then measures, N times each (median), a cold
# boot until the guest's service answers a client on the host (pbr-img
# boot) and a recovery from each candidate until the same answer (pbr-img
# recover: decision, restore, resume), three ways:
#   spawn      QEMU started at the decision (for the reboot too);
#   standby    a QEMU process already running: the reboot runs in a QEMU
#              started paused (what a reset of a running VM gives), the
#              recovery gets a QEMU started beforehand, waiting for the state;
#   prestaged  as standby, and the waiting QEMU has loaded the latest
#              candidate beforehand (the reboot is standby's).
# Runs are interleaved, so that the machine's drift hits every column alike.
# The last line is "phase-based reboot: cold boot X s, recovery Y s, Z%
# shorter" for the best candidate of the last size, prestaged; the lines
# before it, for standby and spawn.
set -euo pipefail
cd "$(dirname "$0")/.."
mems="256 1024 4096"
runs=5
while [ $# -gt 0 ]; do
    case "$1" in
        --mem) mems="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        *) echo "usage: bench/phase-reboot.sh [--mem MB] [--runs N]" >&2; exit 2 ;;
    esac
done
# QEMU 7.2 first on PATH (the system's, or unpacked by scripts/fetch-qemu72).
PATH="$(scripts/fetch-qemu72):$PATH"
cargo build --release -q -p pbr-img
target="$(scripts/target-dir)"
pbr="$target/release/pbr-img"
read -r kernel initrd < <(scripts/fetch-guest)
root="$target/guest/root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
append="console=ttyS0 pbr.data=1 pbr.anon=1"

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

header() {
    echo
    echo "$1"
    echo
    echo "| guest MiB | normal reboot (s) | recovery from kernel (s) | recovery from daemons (s) | best reduction | daemons image before / after trim (MiB) |"
    echo "|---|---|---|---|---|---|"
}

declare -A rows last
for mem in $mems; do
    out="$work/cap-$mem"
    $pbr capture --kernel "$kernel" --initrd "$initrd" --append "$append pbr.kpf=1" --mem "$mem" \
        --root "$root" -o "$out" --json > "$work/cap-$mem.json"
    sizes=$(python3 -c "
import json; d={c['phase']: c for c in json.load(open('$work/cap-$mem.json'))}['daemons']
print('%.1f / %.1f' % (d['untrimmed_bytes'] / 1048576, d['image_bytes'] / 1048576))")
    declare -A cold=() rk=() rd=()
    for _ in $(seq "$runs"); do
        for vmm in spawn standby; do
            flag=""
            [ "$vmm" = standby ] && flag="--standby"
            cold[$vmm]+="$($pbr boot $flag --kernel "$kernel" --initrd "$initrd" --append "$append" --mem "$mem" --json | json "['cold_boot_s']") "
        done
        for vmm in spawn standby prestaged; do
            flag=""
            [ "$vmm" != spawn ] && flag="--$vmm"
            rk[$vmm]+="$($pbr recover $flag --json "$out/kernel.pbr" | json "['downtime_s']") "
            rd[$vmm]+="$($pbr recover $flag --json --root "$root" "$out/kernel.pbr" "$out/daemons.pbr" | json "['downtime_s']") "
        done
    done
    cold[prestaged]="${cold[standby]}"
    for vmm in spawn standby prestaged; do
        c=$(printf '%s\n' ${cold[$vmm]} | median)
        k=$(printf '%s\n' ${rk[$vmm]} | median)
        d=$(printf '%s\n' ${rd[$vmm]} | median)
        best=$(printf '%s\n%s\n' "$k" "$d" | sort -g | head -1)
        pct=$(awk -v c="$c" -v b="$best" 'BEGIN { printf "%.1f", (1 - b / c) * 100 }')
        rows[$vmm]+="$(printf '| %s | %.2f | %.2f | %.2f | %s%% | %s |' "$mem" "$c" "$k" "$d" "$pct" "$sizes")"$'\n'
        last[$vmm]="cold boot $(printf '%.2f' "$c") s, recovery $(printf '%.2f' "$best") s, $pct% shorter"
    done
done
header "QEMU started at the decision (its start is downtime, for the reboot too):"
printf '%s' "${rows[spawn]}"
header "QEMU process already running (reboot: from cont of a QEMU started paused; recovery: a standby QEMU waiting for the state):"
printf '%s' "${rows[standby]}"
header "As above, the standby QEMU having loaded the latest candidate beforehand (reboot as above):"
printf '%s' "${rows[prestaged]}"
echo
echo "phase-based reboot, QEMU started at the decision: ${last[spawn]}"
echo "phase-based reboot, standby QEMU: ${last[standby]}"
echo "phase-based reboot: ${last[prestaged]}"
