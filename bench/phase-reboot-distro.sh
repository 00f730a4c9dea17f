#!/usr/bin/env bash
# Phase-based reboot of a real distribution guest against a cold boot: the
# Debian guest of scripts/fetch-distro-guest (systemd, nginx-light, a
# read-only root disk and a data disk) under QEMU (TCG), its pbr-agent
# announcing the `kernel` (initramfs) and `daemons` points.
#
#   bench/phase-reboot-distro.sh [--mem MB] [--runs N] [--candidates "kernel daemons"] [--json FILE]
#
# For each guest size (512, 1024 and 4096 MiB unless --mem is given): one
# capture (pbr-img capture -- QEMU...), then N times each, interleaved:
#   - a cold boot until the agent says ready (pbr-img boot -- QEMU...);
#   - a recovery from each candidate until the agent says ready (pbr-img
#     recover: seal check, restore, clock and RNG, data disk mounted),
#     three ways: spawn (QEMU started at the decision), standby (a QEMU
#     started beforehand waits for the state), prestaged (that QEMU has
#     loaded the candidate beforehand).
# The `daemons` candidate is also trimmed of its page cache (pbr-img trim
# --drop free,zero,cache: a restore reads those pages back from the root
# disk) and packed; that image, `daemons_cache`, is recovered the same
# three ways, so the refill's cost shows against the stored candidate.
# Medians are printed as a table; --json writes, per guest size, mem_mb,
# cold_boot_s, recovery_s (per candidate and way), image_mib (per
# candidate: untrimmed and as captured; for daemons also trimmed of free
# and zero pages, trimmed_cache and packed) and daemons_stored_mib (the
# stored pages of the cache-trimmed daemons image by class, and its kernel
# pages by kind: reserved, slab, page tables, other: where the rest
# goes); every run's own JSON goes to FILE.rows.jsonl. The last line is
# "phase-based reboot (distro): cold boot X s, recovery Y s, Z% shorter"
# for the first size, daemons, spawn.
set -euo pipefail
cd "$(dirname "$0")/.."
mems="512 1024 4096"
runs=3
json_out=""
cands="kernel daemons"
while [ $# -gt 0 ]; do
    case "$1" in
        --mem) mems="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --json) json_out="$2"; shift 2 ;;
        --candidates) cands="$2"; shift 2 ;;
        *) echo "usage: bench/phase-reboot-distro.sh [--mem MB] [--runs N] [--candidates \"kernel daemons\"] [--json FILE]" >&2; exit 2 ;;
    esac
done
# QEMU 7.2 first on PATH (the system's, or unpacked by scripts/fetch-qemu72).
PATH="$(scripts/fetch-qemu72):$PATH"
cargo build --release -q -p pbr-img
target="$(scripts/target-dir)"
pbr="$target/release/pbr-img"
guest_json="$(mktemp)"
scripts/fetch-distro-guest > "$guest_json"
work="$(mktemp -d /var/tmp/pbr-bench-distro.XXXXXX)"
trap 'rm -rf "$work" "$guest_json"' EXIT

# The guest's QEMU command line for `mem` MiB and disks in `dir`, one
# argument a line.
argv() {
    python3 - "$guest_json" "$1" "$2" <<'PY'
import json, socket, sys
g = json.load(open(sys.argv[1])); mem, d = sys.argv[2], sys.argv[3]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
args = ["qemu-system-x86_64"] + [a.replace("ROOT", d + "/root.raw").replace("DATA", d + "/data.raw").replace("PORT", str(port)) for a in g["qemu_args"]]
args[args.index("-m") + 1] = mem
args += ["-serial", "file:" + d + "/console.txt"]
print("\n".join(args))
PY
}

results="$work/results.jsonl"
: > "$results"
for mem in $mems; do
    d="$work/$mem"
    mkdir -p "$d"
    root="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['root'])" "$guest_json")"
    data="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['data'])" "$guest_json")"
    cp --sparse=always "$root" "$d/root.raw"
    cp --sparse=always "$data" "$d/data.raw"
    mapfile -t cmd < <(argv "$mem" "$d")
    echo "== $mem MiB: capture" >&2
    "$pbr" -q capture --json -o "$d/cand" -- "${cmd[@]}" > "$d/capture.json"
    echo "{\"mem_mb\": $mem, \"capture\": $(tr -d '\n' < "$d/capture.json")}" >> "$results"
    c="$d/cand"
    # The agent's own account of its page-cache walk at `daemons`.
    walk="$(grep -ao 'point daemons ([^)]*)' "$d/console.txt" | head -1 || true)"
    echo "== $mem MiB: agent: ${walk:-no report on the console}" >&2
    echo "{\"mem_mb\": $mem, \"agent_walk\": \"$walk\"}" >> "$results"
    "$pbr" -q trim "$c/daemons.pbr" --drop free,zero -o "$d/daemons-free-zero.pbr"
    "$pbr" -q trim "$c/daemons.pbr" --drop free,zero,cache -o "$d/daemons_cache.pbr"
    "$pbr" -q pack "$d/daemons_cache.pbr" -o "$d/daemons-packed.pbr"
    sizes="{\"trimmed\": $(stat -c %s "$d/daemons-free-zero.pbr"), \"trimmed_cache\": $(stat -c %s "$d/daemons_cache.pbr"), \"packed\": $(stat -c %s "$d/daemons-packed.pbr")}"
    echo "{\"mem_mb\": $mem, \"daemons_sizes\": $sizes, \"daemons_cache_inspect\": $("$pbr" inspect --json "$d/daemons_cache.pbr" | tr -d '\n')}" >> "$results"
    mkdir -p "$d/cache" && mv "$d/daemons_cache.pbr" "$d/cache/"
    for run in $(seq "$runs"); do
        echo "== $mem MiB: run $run of $runs" >&2
        t="$("$pbr" boot --json -- "${cmd[@]}")"
        echo "{\"mem_mb\": $mem, \"cold\": $t}" >> "$results"
        for cand in $cands daemons_cache; do
            file="$d/cand/$cand.pbr"
            [ "$cand" = daemons_cache ] && file="$d/cache/daemons_cache.pbr"
            for way in spawn standby prestaged; do
                flag=""
                [ "$way" = spawn ] || flag="--$way"
                r="$("$pbr" recover --json $flag "$file")"
                echo "{\"mem_mb\": $mem, \"candidate\": \"$cand\", \"way\": \"$way\", \"recovery\": $r}" >> "$results"
            done
        done
    done
done

[ -z "$json_out" ] || cp "$results" "$json_out.rows.jsonl"
python3 - "$results" "$json_out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out = []
for mem in dict.fromkeys(r["mem_mb"] for r in rows):
    mine = [r for r in rows if r["mem_mb"] == mem]
    cap = next(r["capture"] for r in mine if "capture" in r)
    cold = statistics.median(r["cold"]["cold_boot_s"] for r in mine if "cold" in r)
    rec, chosen = {}, {}
    for r in mine:
        if "recovery" in r:
            rec.setdefault(r["candidate"], {}).setdefault(r["way"], []).append(r["recovery"]["downtime_s"])
            chosen.setdefault(r["candidate"], set()).add(r["recovery"]["chosen"] is not None)
    assert all(c == {True} for c in chosen.values()), "a candidate was refused: the bench's disks changed"
    rec = {c: {w: statistics.median(v) for w, v in ways.items()} for c, ways in rec.items()}
    mib = lambda b: round(b / 1048576, 1)
    images = {c["phase"]: {"untrimmed": mib(c["untrimmed_bytes"]), "captured": mib(c["image_bytes"])} for c in cap["candidates"]}
    sizes = next(r for r in mine if "daemons_sizes" in r)
    images["daemons"].update({k: mib(v) for k, v in sizes["daemons_sizes"].items()})
    by_class = sizes["daemons_cache_inspect"]["pages"]["by_class"]
    stored = {c: mib(4096 * sum(v for e, v in row.items() if e in ("raw", "lz4", "dup"))) for c, row in by_class.items()}
    refill = sizes["daemons_cache_inspect"]["restore"]["refill"]["pages"]
    kernel = json.loads(sizes["daemons_cache_inspect"]["metadata"].get("classes.kernel_pages", "{}"))
    stored["kernel_by_kind"] = {k: mib(4096 * v) for k, v in kernel.items()}
    walk = next((r["agent_walk"] for r in mine if "agent_walk" in r), "")
    out.append({"mem_mb": mem, "cold_boot_s": cold, "recovery_s": rec, "image_mib": images,
                "daemons_stored_mib": stored, "refilled_mib": mib(4096 * refill), "agent_walk": walk})
print()
print("| guest MiB | cold boot (s) | daemons: spawn / standby / prestaged (s) | daemons trimmed of cache: spawn / standby / prestaged (s) | refill cost (spawn) | daemons vs cold boot |")
print("|---|---|---|---|---|---|")
ways = lambda r, c: " / ".join(f"{r[c][w]:.3f}" for w in ("spawn", "standby", "prestaged"))
for o in out:
    r = o["recovery_s"]
    print(f"| {o['mem_mb']} | {o['cold_boot_s']:.2f} | {ways(r, 'daemons')} | {ways(r, 'daemons_cache')} | "
          f"{100 * (r['daemons_cache']['spawn'] / r['daemons']['spawn'] - 1):+.1f}% | "
          f"{100 * (1 - r['daemons']['spawn'] / o['cold_boot_s']):.1f}% shorter |")
print()
print("| guest MiB | daemons image (MiB): untrimmed / captured / trimmed (free, zero) / trimmed_cache / packed | refilled (MiB) | stored in trimmed_cache by class (MiB) |")
print("|---|---|---|---|")
for o in out:
    i = o["image_mib"]["daemons"]
    st = ", ".join(f"{c} {v}" for c, v in o["daemons_stored_mib"].items() if v and c != "kernel_by_kind")
    st += " (kernel: " + ", ".join(f"{k} {v}" for k, v in o["daemons_stored_mib"].get("kernel_by_kind", {}).items()) + ")"
    print(f"| {o['mem_mb']} | {i['untrimmed']} / {i['captured']} / {i['trimmed']} / {i['trimmed_cache']} / {i['packed']} | {o['refilled_mib']} | {st} |")
print()
for o in out:
    print(f"{o['mem_mb']} MiB, the agent at daemons: {o['agent_walk']}")
if "kernel" in out[0]["recovery_s"]:
    print()
    print("| guest MiB | kernel: spawn / standby / prestaged (s) |")
    print("|---|---|")
    for o in out:
        print(f"| {o['mem_mb']} | {ways(o['recovery_s'], 'kernel')} |")
if sys.argv[2]:
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=2)
first = out[0]
cold, rec = first["cold_boot_s"], first["recovery_s"]["daemons"]["spawn"]
print(f"phase-based reboot (distro): cold boot {cold:.2f} s, recovery {rec:.3f} s, {100 * (1 - rec / cold):.1f}% shorter")
PY
