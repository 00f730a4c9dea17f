#!/usr/bin/env bash
# Kernel updates that keep a service's state: the Debian guest
# (scripts/fetch-distro-guest) fills memcached with N keys, a client keeps
# a connection open, and the kernel is updated with `pbr-img update` (CRIU
# checkpoint, new kernel in a new QEMU, restore before the unit starts)
# and, on a fresh copy of the disks, the plain way (power off, boot the new
# kernel: memcached starts cold). Prints the service's downtime (from the
# update request to its first answer after) and the keys kept, both ways,
# and whether the client's connection survived.
#
#   bench/kernel-update.sh [--to RELEASE] [--keys N] [--json FILE]
#
# RELEASE is one of the guest's kernels (guest.json "kernels"):
# 6.1.0-56-cloud-amd64 (the default: within 6.1) or
# 6.12.118+deb12-cloud-amd64 (across to 6.12).
# The last line reads "kernel update: service back in X s vs Y s, N/M keys
# kept". (bench/kernel_update.py does the work; see its text.)
set -euo pipefail
cd "$(dirname "$0")/.."
to=6.1.0-56-cloud-amd64
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --to) to="$2"; shift 2 ;;
        --keys | --json | --mem) extra+=("$1" "$2"); shift 2 ;;
        *) echo "usage: bench/kernel-update.sh [--to RELEASE] [--keys N] [--mem MB] [--json FILE]" >&2; exit 2 ;;
    esac
done
target="$(scripts/target-dir)"
PATH="$(scripts/fetch-qemu72):$PATH"
export PATH
cargo build --release -q -p pbr-img
scripts/fetch-distro-guest --quiet > /dev/null
exec python3 bench/kernel_update.py --pbr "$target/release/pbr-img" --guest "$target/distro-guest/guest.json" \
    --to "$to" "${extra[@]}"
