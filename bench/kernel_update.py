#!/usr/bin/env python3
"""The kernel-update experiment behind bench/kernel-update.sh.

The Debian guest (scripts/fetch-distro-guest) runs memcached, which holds
its data only in memory. Its kernel is updated twice, each on a fresh copy
of the disks:

  pbr    the guest runs under `pbr-img run`; `pbr-img update --kernel NEW
         --initrd NEWI --keep memcached.service` has its agent checkpoint
         memcached with CRIU, powers the guest off, boots the new kernel
         in a new QEMU (capturing fresh candidates) and restores memcached
         before its unit would start it;
  plain  the guest runs in plain QEMU; the update powers it off (ACPI) and
         boots the new kernel in a new QEMU: memcached starts cold.

Before each update N keys are stored and a client keeps a connection open.
A poller asks memcached for a key every 50 ms from new connections; the
downtime runs from the update request to the first answer after the
outage. Then every key is asked for (the keys kept), and the kept
connection is tried (both ways use a new QEMU process, whose user network
does not carry the old connections over: it does not survive). At the end
both disks of the pbr run must pass `e2fsck -fn`.

Prints a table; with --json, `kernel_before`, `kernel_after`, `keys_total`,
`keys_kept`, `downtime_s`, `plain_downtime_s` and more. The last line reads
"kernel update: service back in X s vs Y s, N/M keys kept".
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Memcached:
    """memcached's text protocol through the host's forwarded port."""

    def __init__(self, port):
        self.port = port

    def connect(self, timeout=2.0):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.settimeout(timeout)
        return s

    @staticmethod
    def ask(s, line, until):
        s.sendall(line)
        data = b""
        while not data.endswith(until):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            data += chunk
        return data

    def fill(self, n, size):
        with self.connect() as s:
            for start in range(0, n, 500):
                batch = b"".join(b"set k%d 0 0 %d noreply\r\n%s\r\n" % (i, size, (b"%08d" % i) * (size // 8))
                                 for i in range(start, min(n, start + 500)))
                s.sendall(batch)
            self.ask(s, b"version\r\n", b"\r\n")

    def count(self, n, size):
        kept = 0
        with self.connect(10) as s:
            for start in range(0, n, 100):
                keys = range(start, min(n, start + 100))
                reply = self.ask(s, b"get " + b" ".join(b"k%d" % i for i in keys) + b"\r\n", b"END\r\n")
                kept += sum(1 for i in keys if b"VALUE k%d 0 %d\r\n%s\r\n" % (i, size, (b"%08d" % i) * (size // 8))
                            in reply)
        return kept

    def answers(self):
        try:
            with self.connect(0.5) as s:
                return self.ask(s, b"version\r\n", b"\r\n").startswith(b"VERSION")
        except OSError:
            return False


class Poller:
    """Asks memcached every 50 ms; the outage after a moment."""

    def __init__(self, mc):
        self.mc, self.seen, self.on = mc, [], True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while self.on:
            t = time.time()
            self.seen.append((t, self.mc.answers()))
            time.sleep(max(0.0, 0.05 - (time.time() - t)))

    def back_after(self, t0, limit):
        """When the service answered again after its outage that followed
        `t0`; None if it never did."""
        t = time.monotonic()
        while time.monotonic() - t < limit:
            after = [a for a in list(self.seen) if a[0] > t0]
            down = next((i for i, (_, ok) in enumerate(after) if not ok), None)
            if down is not None:
                up = next((when for when, ok in after[down:] if ok), None)
                if up is not None:
                    return up
            time.sleep(0.1)
        return None


def qemu_argv(guest, d, http, cache, mem, kernel, initrd):
    argv = ["qemu-system-x86_64"]
    for a in guest["qemu_args"]:
        a = a.replace("ROOT", os.path.join(d, "root.raw")).replace("DATA", os.path.join(d, "data.raw"))
        a = a.replace("PORT", str(http))
        if a.startswith("user,id=net0"):
            # memcached's port beside the web server's.
            a += f",hostfwd=tcp:127.0.0.1:{cache}-:11211"
        argv.append(a)
    argv[argv.index("-m") + 1] = str(mem)
    argv[argv.index("-kernel") + 1] = kernel
    argv[argv.index("-initrd") + 1] = initrd
    return argv


def lab(guest, work, name):
    """A fresh copy of the guest's disks in WORK/NAME, two free ports (the
    web server's, memcached's) and memcached's client."""
    d = os.path.join(work, name)
    os.makedirs(d)
    for k in ("root", "data"):
        subprocess.run(["cp", "--sparse=always", guest[k], os.path.join(d, f"{k}.raw")], check=True)
    http, cache = free_port(), free_port()
    return d, http, cache, Memcached(cache)


def wait(cond, limit, what):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if cond():
            return
        time.sleep(0.1)
    raise SystemExit(f"kernel update: {what} within {limit} s")


def filled(mc, a, limit):
    """Once memcached answers: its keys stored, a client connected and
    kept, the poller asking; the moment the update is asked for."""
    wait(mc.answers, limit, "memcached does not answer")
    mc.fill(a.keys, a.size)
    client = mc.connect()
    poller = Poller(mc)
    time.sleep(1)
    return client, poller, time.time()


def kept_connection(s):
    try:
        return Memcached.ask(s, b"get k0\r\n", b"END\r\n").startswith(b"VALUE")
    except OSError:
        return False


def with_pbr(a, guest, work, new):
    d, http, cache, mc = lab(guest, work, "pbr")
    log = os.path.join(d, "run.jsonl")
    cand = os.path.join(d, "candidates")
    argv = qemu_argv(guest, d, http, cache, a.mem, guest["kernel"], guest["initrd"])
    err = open(os.path.join(d, "run.err"), "wb")
    run = subprocess.Popen([a.pbr, "run", "--candidates", cand, "--log", log, "--"] + argv,
                           stdin=subprocess.DEVNULL, stderr=err)

    def events(name):
        try:
            with open(log) as f:
                return [e for e in map(json.loads, filter(str.strip, f)) if e["event"] == name]
        except FileNotFoundError:
            return []
    try:
        wait(lambda: events("ready") or run.poll() is not None, 900, "no ready event")
        if run.poll() is not None:
            raise SystemExit(f"kernel update: pbr-img run exited ({run.returncode}); see {err.name}")
        client, poller, t0 = filled(mc, a, 120)
        upd = subprocess.run([a.pbr, "update", "--candidates", cand, "--kernel", new["kernel"],
                              "--initrd", new["initrd"], "--keep", "memcached.service", "--json"],
                             capture_output=True, text=True, timeout=1200)
        if upd.returncode != 0:
            raise SystemExit(f"kernel update: pbr-img update failed: {upd.stderr.strip()}")
        report = json.loads(upd.stdout)
        print(f"pbr: {report}", file=sys.stderr)
        up = poller.back_after(t0, 600)
        poller.on = False
        kept = mc.count(a.keys, a.size)
        survived = kept_connection(client)
        captured = len(events("captured"))
        # Where the update's time went, from run's log: the checkpoint, the
        # power-off, the new boot's points (since its QEMU started) and ready.
        at = {e["event"]: e for e in events("checkpointed") + events("updated")}
        boots = events("booting")
        new_boot = [e for e in events("captured") if e["time_unix_s"] >= boots[-1]["time_unix_s"]]
        phases = {"checkpoint_s": report.get("checkpoint_s"),
                  "power_off_s": round(boots[-1]["time_unix_s"] - at["checkpointed"]["time_unix_s"], 3),
                  "points_since_power_on_s": {e["point"]: round(e["since_power_on_s"], 3) for e in new_boot},
                  "ready_since_power_on_s": events("ready")[-1].get("boot_s")}
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=180)
        except subprocess.TimeoutExpired:
            run.kill()
    clean = all(subprocess.run(["e2fsck", "-fn", os.path.join(d, f"{k}.raw")], capture_output=True).returncode == 0
                for k in ("root", "data"))
    return {"downtime_s": round(up - t0, 3) if up else None, "keys_kept": kept, "connection_survived": survived,
            "report": report, "candidates_after": captured, "fsck_clean": clean, "stopped": run.returncode == 0,
            "phases": phases}


def plain(a, guest, work, new):
    d, http, cache, mc = lab(guest, work, "plain")
    qmp = os.path.join(d, "qmp.sock")

    def start(kernel, initrd):
        argv = qemu_argv(guest, d, http, cache, a.mem, kernel, initrd)
        return subprocess.Popen(argv + ["-qmp", f"unix:{qmp},server=on,wait=off"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    q = start(guest["kernel"], guest["initrd"])
    try:
        client, poller, t0 = filled(mc, a, 900)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(qmp)
            s.sendall(b'{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n')
            q.wait(timeout=120)
        q = start(new["kernel"], new["initrd"])
        up = poller.back_after(t0, 900)
        poller.on = False
        kept = mc.count(a.keys, a.size)
        survived = kept_connection(client)
    finally:
        q.kill()
        q.wait()
    return {"downtime_s": round(up - t0, 3) if up else None, "keys_kept": kept, "connection_survived": survived}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pbr", required=True)
    p.add_argument("--guest", required=True)
    p.add_argument("--to", required=True, help="the kernel release to update to")
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--mem", type=int, default=512)
    p.add_argument("--json")
    a = p.parse_args()
    guest = json.load(open(a.guest))
    new = next((k for k in guest["kernels"] if k["release"] == a.to), None)
    if new is None:
        raise SystemExit(f"kernel update: the guest has no kernel {a.to} "
                         f"(it has {', '.join(k['release'] for k in guest['kernels'])})")
    work = tempfile.mkdtemp(prefix="pbr-kupdate-")
    try:
        r = with_pbr(a, guest, work, new)
        print(f"pbr: {r}", file=sys.stderr)
        pl = plain(a, guest, work, new)
        print(f"plain: {pl}", file=sys.stderr)
    except BaseException:
        print(f"kernel update: failed; its logs are kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    rep = r["report"]
    unit = next((u for u in rep["units"] if u["unit"] == "memcached.service"), {})
    out = {"kernel_before": rep.get("kernel_before"), "kernel_after": rep.get("kernel_after"),
           "keys_total": a.keys, "keys_kept": r["keys_kept"], "downtime_s": r["downtime_s"],
           "plain_downtime_s": pl["downtime_s"], "plain_keys_kept": pl["keys_kept"],
           "connection_survived": r["connection_survived"], "plain_connection_survived": pl["connection_survived"],
           "restored": unit.get("restored"), "reason": unit.get("reason"), "checkpoint_s": rep.get("checkpoint_s"),
           "update_total_s": rep.get("total_s"), "candidates_after": r["candidates_after"],
           "fsck_clean": r["fsck_clean"], "vm": "new QEMU process", "phases": r["phases"]}
    print(f"{'':>6} {'kernel':>40} {'downtime s':>11} {'keys kept':>12} {'connection':>11}")
    print(f"{'pbr':>6} {str(out['kernel_before']) + ' -> ' + str(out['kernel_after']):>40} "
          f"{out['downtime_s'] or float('nan'):>11.2f} {r['keys_kept']:>6}/{a.keys:<5} "
          f"{'kept' if r['connection_survived'] else 'lost':>11}")
    print(f"{'plain':>6} {'(reboot into ' + a.to + ')':>40} {pl['downtime_s'] or float('nan'):>11.2f} "
          f"{pl['keys_kept']:>6}/{a.keys:<5} {'kept' if pl['connection_survived'] else 'lost':>11}")
    if not unit.get("restored"):
        print(f"memcached was not restored: {unit.get('reason')}")
    ph = r["phases"]
    print(f"pbr's update: checkpoint {ph['checkpoint_s'] or 0:.2f} s, power-off {ph['power_off_s']:.2f} s, then "
          f"points at {ph['points_since_power_on_s']} and ready at {ph['ready_since_power_on_s'] or 0:.2f} s "
          f"after the new QEMU started")
    print(f"checkpoint {out['checkpoint_s'] or 0:.2f} s; disks clean: {out['fsck_clean']}; "
          f"{out['candidates_after']} candidates captured in all (before and after)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    print(f"kernel update: service back in {out['downtime_s'] or float('nan'):.2f} s vs "
          f"{out['plain_downtime_s'] or float('nan'):.2f} s, {out['keys_kept']}/{out['keys_total']} keys kept")


if __name__ == "__main__":
    main()
