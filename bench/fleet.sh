#!/usr/bin/env bash
# Candidates for a fleet in an S3-compatible store (SeaweedFS on loopback,
# started by scripts/store): N VMs of the busybox guest captured and
# pushed; the store's size against one VM's candidates, push and pull
# throughput against the same client's plain upload and download, and a
# restore from the store on a host that holds nothing (pulled, streamed,
# lazy) against a local one, all with QEMU 10 (scripts/fetch-qemu10).
#
#   bench/fleet.sh [--vms N] [--chunk-pages P] [--runs R] [--json FILE]
#
# The last line reads "fleet: N VMs stored in A MiB vs 1 VM B MiB, lazy
# restore X s vs local Y s". (bench/fleet.py does the work; see its text.)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --vms | --chunk-pages | --runs | --json) extra+=("$1" "$2"); shift 2 ;;
        *) echo "usage: bench/fleet.sh [--vms N] [--chunk-pages P] [--runs R] [--json FILE]" >&2; exit 2 ;;
    esac
done
PATH="$(scripts/fetch-qemu72):$PATH"
export PATH
qemu10="$(scripts/fetch-qemu10)"
cargo build --release -q -p pbr-img
cargo build --release -q -p pbr-store --example plain
target="$(scripts/target-dir)"
read -r kernel initrd < <(scripts/fetch-guest)
exec python3 bench/fleet.py --pbr "$target/release/pbr-img" --plain "$target/release/examples/plain" \
    --kernel "$kernel" --initrd "$initrd" --root "$target/guest/root" --qemu "$qemu10" "${extra[@]}"
