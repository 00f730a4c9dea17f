#!/usr/bin/env bash
# Coverage-guided fuzzing of one target with libFuzzer (nightly toolchain
# and cargo-fuzz): fuzz/run.sh TARGET SECONDS
# Seeds come from fuzz/seeds/TARGET; the working corpus grows in
# fuzz/corpus/TARGET (not committed); crashes land in fuzz/artifacts/TARGET:
# copy each into fuzz/regressions/TARGET, where `cargo test` replays it.
# The last line printed is "TARGET: N execs in S s (R exec/s), C crashes".
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?usage: fuzz/run.sh TARGET SECONDS}"
secs="${2:-60}"
mkdir -p "corpus/$target" "artifacts/$target"
cp -n "seeds/$target/"* "corpus/$target/" 2>/dev/null || true
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo +nightly fuzz run --release --sanitizer none "$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -timeout=20 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1 || status=$?
execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
crashes="$(find "artifacts/$target" -type f | wc -l)"
if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
fi
echo "$target: ${execs:-0} execs in $secs s ($(( ${execs:-0} / secs )) exec/s), $crashes crashes"
exit "$status"
