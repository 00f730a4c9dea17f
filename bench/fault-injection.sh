#!/usr/bin/env bash
# Fault injection, the paper's experiment: the Debian guest with disks
# (scripts/fetch-distro-guest) runs under `pbr-img run`, and N kernel
# failures are injected inside it, in turn: a panic (sysrq), an oops, a soft
# lockup, a hung task (the fault module the guest carries), a hang that
# only the agent's heartbeat catches, a reboot the guest asks for. Each is
# recovered phase-based (`--prestaged`), then, in a second run, by a
# normal reboot (`--on-failure full --on-reboot full`: a reset and a cold
# boot). An HTTP client asks the service every 100 ms; a failure's
# downtime runs from its injection (or the service's last answer, if it
# still answered) to the first answer after the outage. Before each
# failure the guest writes and syncs a file on its data disk, checked
# after the recovery; both disks pass `e2fsck -fn` at the end.
#
#   bench/fault-injection.sh [--faults N] [--mem MB] [--json FILE] [--svg FILE]
#
# Prints a table per failure kind; the last line reads "fault injection:
# N/M failures recovered, downtime X s vs normal reboot Y s (Z% shorter)".
# (bench/fault_injection.py does the work; see its text.)
set -euo pipefail
cd "$(dirname "$0")/.."
faults=6
mem=512
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --faults) faults="$2"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --json | --svg) extra+=("$1" "$2"); shift 2 ;;
        *) echo "usage: bench/fault-injection.sh [--faults N] [--mem MB] [--json FILE] [--svg FILE]" >&2; exit 2 ;;
    esac
done
target="$(scripts/target-dir)"
PATH="$(scripts/fetch-qemu72):$PATH"
export PATH
cargo build --release -q -p pbr-img
scripts/fetch-distro-guest --quiet > /dev/null
exec python3 bench/fault_injection.py --pbr "$target/release/pbr-img" --guest "$target/distro-guest/guest.json" \
    --faults "$faults" --mem "$mem" "${extra[@]}"
