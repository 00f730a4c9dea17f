#!/usr/bin/env python3
"""The fleet experiment behind bench/fleet.sh.

Starts the store (scripts/store: SeaweedFS on loopback, two volume servers
holding every chunk twice), captures N VMs of the reference busybox guest
(scripts/fetch-guest; `pbr-img capture`, 256 MiB, `nokaslr`, a candidate
at `kernel` and at `daemons`) and pushes every candidate. It reports:

- the store's size for the N VMs (chunks and indexes) against one VM's
  candidates as files;
- push and pull throughput (guest memory per second, the pull through an
  empty cache) against the same client's plain upload and download of
  the same image file as one object;
- the time of `pbr-img recover` from the decision to the service
  answering, all with one QEMU (10, which maps RAM from a file): from a
  local candidate, and from the store on a host that holds nothing, three
  ways (`--fetch`): a full pull then the restore; streamed (QEMU maps the
  RAM from the store's mount, every chunk read in before the guest runs);
  lazy (the guest runs at once, pages fetched when first touched).

With --json, the numbers, with `store.server`. The last line reads
"fleet: N VMs stored in A MiB vs 1 VM B MiB, lazy restore X s vs local Y s".
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20


def run(cmd, env=None, **kw):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"fleet: {' '.join(cmd[:3])}...: {p.stderr.strip()}")
    return p.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pbr", required=True)
    p.add_argument("--plain", required=True)
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--vms", type=int, default=10)
    p.add_argument("--chunk-pages", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--qemu", required=True)
    p.add_argument("--json")
    a = p.parse_args()
    if a.vms < 2:
        raise SystemExit("fleet: --vms must be at least 2 (one VM's candidates are recovered from another host)")
    work = tempfile.mkdtemp(prefix="pbr-fleet-")
    store_dir = os.path.join(work, "store")
    envfile = run(["scripts/store", "start", store_dir]).strip()
    env = dict(os.environ)
    for line in open(envfile):
        k, v = line.removeprefix("export ").strip().split("=", 1)
        env[k] = v.strip('"')
    try:
        caps = []
        for i in range(a.vms):
            out = os.path.join(work, f"vm{i}")
            run([a.pbr, "capture", "--kernel", a.kernel, "--initrd", a.initrd, "--append",
                 "console=ttyS0 pbr.kpf=1 nokaslr", "--mem", "256", "--root", a.root, "-o", out, "--json"])
            caps.append(out)
        one_vm = sum(os.path.getsize(os.path.join(caps[0], f)) for f in ("kernel.pbr", "daemons.pbr"))
        pushes = []
        for i, out in enumerate(caps):
            for phase in ("kernel", "daemons"):
                r = json.loads(run([a.pbr, "push", os.path.join(out, f"{phase}.pbr"),
                                    f"s3://fleet/bench/vm{i}-{phase}", "--chunk-pages", str(a.chunk_pages), "--json"],
                                   env=env))
                pushes.append(r)
                print(f"push vm{i} {phase}: {r['chunks']} chunks, {r['uploaded']} new, {r['seconds']:.2f} s",
                      file=sys.stderr)
        usage = json.loads(run([a.pbr, "ls", "s3://fleet/bench", "--json"], env=env).strip().splitlines()[-1])
        stored = usage["chunk_bytes"] + usage["index_bytes"]

        # Throughput: the first VM's daemons candidate, pushed to a fresh
        # prefix (every chunk new), pulled through an empty cache; the same
        # file put and got as one object by the same client.
        image = os.path.join(caps[0], "daemons.pbr")
        guest = 256 * MIB
        size = os.path.getsize(image)
        push_s, pull_s, put_s, get_s = [], [], [], []
        for r in range(a.runs):
            push = json.loads(run([a.pbr, "push", image, f"s3://fleet/tp{r}/img", "--chunk-pages",
                                   str(a.chunk_pages), "--json"], env=env))
            push_s.append(push["seconds"])
            cache = os.path.join(work, f"cache-tp{r}")
            pull = json.loads(run([a.pbr, "pull", f"s3://fleet/tp{r}/img", "-o", os.path.join(work, f"tp{r}.pbr"),
                                   "--cache", cache, "--json"], env=env))
            pull_s.append(pull["seconds"])
            put_s.append(float(run([a.plain, "put", image, f"s3://fleet/plain{r}/img"], env=env)))
            get_s.append(float(run([a.plain, "get", f"s3://fleet/plain{r}/img", os.path.join(work, "got")], env=env)))
        med = statistics.median

        # Restore: local against the store on a host that holds nothing.
        def recover(candidate, extra):
            t = time.monotonic()
            out = json.loads(run([a.pbr, "recover", "--root", a.root, "--qemu", a.qemu, "--json", candidate] + extra,
                                 env=env))
            return time.monotonic() - t, out
        # All timed the same way: the whole command, from its start (the
        # decision) to the service answering; the local one's own
        # downtime_s is kept too. Each store restore on a fresh host.
        local_s, local_downtime_s = [], []
        ways = {"pull": [], "stream": [], "lazy": []}
        fetched = {}
        for r in range(a.runs):
            s, out = recover(os.path.join(caps[1], "daemons.pbr"), [])
            local_s.append(s)
            local_downtime_s.append(out.get("downtime_s") or s)
            for way, times in ways.items():
                s, out = recover("s3://fleet/bench/vm1-daemons",
                                 ["--fetch", way, "--cache", os.path.join(work, f"host-{way}-{r}")])
                times.append(s)
                if out.get("store"):
                    fetched[way] = out["store"]
                print(f"recover {way} run {r}: {s:.2f} s", file=sys.stderr)
        result = {
            "store": {"server": env.get("PBR_STORE_SERVER"), "nodes": "1 master, 2 volume servers (replication 001), 1 filer with S3"},
            "vms": a.vms, "chunk_pages": a.chunk_pages,
            "stored_bytes": stored, "one_vm_candidates_bytes": one_vm, "stored_vs_one_vm": stored / one_vm,
            "chunks": usage["chunks"],
            "push_mib_s": guest / MIB / med(push_s), "pull_mib_s": guest / MIB / med(pull_s),
            "plain_put_mib_s": guest / MIB / med(put_s), "plain_get_mib_s": guest / MIB / med(get_s),
            "image_bytes": size,
            "push_s": med(push_s), "pull_s": med(pull_s), "plain_put_s": med(put_s), "plain_get_s": med(get_s),
            "local_restore_s": med(local_s), "local_downtime_s": med(local_downtime_s),
            "pull_then_restore_s": med(ways["pull"]), "stream_restore_s": med(ways["stream"]),
            "lazy_restore_s": med(ways["lazy"]), "mounts": fetched, "qemu": a.qemu,
        }
    finally:
        subprocess.run(["scripts/store", "stop", store_dir])
        shutil.rmtree(work, ignore_errors=True)
    r = result
    print(f"store: {r['store']['server']}; {a.vms} VMs x 2 candidates, chunks of {a.chunk_pages} pages on average")
    print(f"stored {stored / MIB:.1f} MiB in {r['chunks']} chunks vs one VM's candidates {one_vm / MIB:.1f} MiB "
          f"({r['stored_vs_one_vm']:.2f}x)")
    print(f"push {r['push_s']:.2f} s ({r['push_mib_s']:.0f} MiB/s of guest memory) vs plain put of the image file "
          f"{r['plain_put_s']:.2f} s; pull {r['pull_s']:.2f} s vs plain get {r['plain_get_s']:.2f} s "
          f"(image {size / MIB:.1f} MiB, medians of {a.runs})")
    print(f"recover, the whole command until the service answers (medians of {a.runs}): local "
          f"{r['local_restore_s']:.2f} s (its own downtime_s {r['local_downtime_s']:.2f} s); on an empty host: full "
          f"pull then restore {r['pull_then_restore_s']:.2f} s, streamed {r['stream_restore_s']:.2f} s, lazy "
          f"{r['lazy_restore_s']:.2f} s ({r['lazy_restore_s'] / r['local_restore_s']:.2f}x local)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    print(f"fleet: {a.vms} VMs stored in {stored / MIB:.1f} MiB vs 1 VM {one_vm / MIB:.1f} MiB, lazy restore "
          f"{r['lazy_restore_s']:.2f} s vs local {r['local_restore_s']:.2f} s")


if __name__ == "__main__":
    main()
