#!/usr/bin/env python3
"""The fault-injection experiment behind bench/fault-injection.sh.

Runs the Debian guest (scripts/fetch-distro-guest) under `pbr-img run`
twice: phase-based (`--prestaged`: failures recovered from the latest valid
candidate into a QEMU that waits beside the VM) and normal (`--on-failure
full --on-reboot full`: the machine is reset and boots from scratch). In
each it injects the same failures inside the guest, through root's shell
on the serial console, in turn:

  panic       echo c > /proc/sysrq-trigger (pvpanic tells the host)
  oops        a NULL dereference in the fault module (panic_on_oops=1)
  softlockup  the module spins with preemption off (softlockup_panic=1)
  hungtask    the module sleeps uninterruptibly (hung_task_panic=1)
  hang        the module spins with interrupts off: nothing in the guest
              reports it; the host sees the agent's heartbeat stop
  reboot      reboot -f (a reboot the guest asks for)

(the module, examples/fault-module, is built against the guest kernel's
headers and installed at /usr/lib/pbr/pbr_fault.ko).

An HTTP client asks the guest's service every 100 ms all along; a failure's
downtime runs from its injection to the first answer after the outage it
caused; where the service still answered after the injection (a hung task
until the kernel's detector fires), from its last answer before the
outage. The time a hang takes to be noticed (--hang-after, 0.5 s: 2.5
heartbeats of 200 ms) counts.
Before each failure the guest writes and syncs a file on its data disk;
after each recovery the file must be there. At the end SIGTERM stops `run`
and both disks must pass `e2fsck -fn`.

Prints a table per failure kind, writes the requests answered per second as
an SVG picture and, with --json, the failures. The last line reads
"fault injection: N/M failures recovered, downtime X s vs normal reboot Y s
(Z% shorter)".
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

FAULT = "insmod /usr/lib/pbr/pbr_fault.ko fault="
KINDS = {
    "panic": "echo c > /proc/sysrq-trigger",
    "oops": FAULT + "oops",
    "softlockup": FAULT + "softlockup",
    "hungtask": FAULT + "hungtask",
    "hang": FAULT + "hang",
    "reboot": "reboot -f",
}


class Guest:
    """One run of the guest under `pbr-img run`, in its own directory."""

    def __init__(self, pbr, guest, mem, mode, work, hang_after):
        self.dir = os.path.join(work, mode)
        os.makedirs(self.dir)
        self.mode = mode
        self.root = os.path.join(self.dir, "root.raw")
        self.data = os.path.join(self.dir, "data.raw")
        for src, dst in ((guest["root"], self.root), (guest["data"], self.data)):
            subprocess.run(["cp", "--sparse=always", src, dst], check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.console = os.path.join(self.dir, "console.sock")
        argv = ["qemu-system-x86_64"]
        for a in guest["qemu_args"]:
            argv.append(a.replace("ROOT", self.root).replace("DATA", self.data).replace("PORT", str(self.port)))
        argv[argv.index("-m") + 1] = str(mem)
        argv += ["-chardev", f"socket,id=pbr-console,path={self.console},server=on,wait=off,"
                 f"logfile={os.path.join(self.dir, 'console.log')}", "-serial", "chardev:pbr-console"]
        self.log = os.path.join(self.dir, "run.jsonl")
        cmd = [pbr, "run", "--candidates", os.path.join(self.dir, "candidates"), "--log", self.log,
               "--hang-after", str(hang_after), "--retry-after", "5"]
        if mode == "normal":
            cmd += ["--on-failure", "full", "--on-reboot", "full"]
        else:
            cmd += ["--prestaged"]
        self.err = open(os.path.join(self.dir, "run.err"), "wb")
        self.proc = subprocess.Popen(cmd + ["--"] + argv, stdin=subprocess.DEVNULL, stderr=self.err)
        self.answers = []  # (time, answered)
        self.polling = True
        self.poller = threading.Thread(target=self._poll, daemon=True)

    def events(self):
        try:
            with open(self.log) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_event(self, name, count, limit):
        t = time.monotonic()
        while time.monotonic() - t < limit:
            if sum(1 for e in self.events() if e["event"] == name) >= count:
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.mode}: pbr-img run exited ({self.proc.returncode}) before {name}")
            time.sleep(0.2)
        raise SystemExit(f"{self.mode}: no {name} event within {limit} s")

    def get(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.3) as s:
                s.settimeout(0.3)
                s.sendall(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            return b" 200 " in data.split(b"\r\n", 1)[0]
        except OSError:
            return False

    def _poll(self):
        while self.polling:
            t = time.time()
            self.answers.append((t, self.get()))
            time.sleep(max(0.0, 0.1 - (time.time() - t)))

    def shell(self, cmd, limit=120):
        """Runs `cmd` in root's shell on the console; returns its exit status."""
        line = f'echo @@""B@@; {cmd}; echo @@""E$?@@\n'.encode()
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(self.console)
            c.settimeout(0.2)
            seen, sent, t = "", 0.0, time.monotonic()
            while time.monotonic() - t < limit:
                if time.monotonic() - sent > 10 and "@@B@@" not in seen:
                    c.sendall(line)
                    sent = time.monotonic()
                try:
                    seen += c.recv(4096).decode(errors="replace")
                except socket.timeout:
                    pass
                b = seen.rfind("@@B@@")
                if b >= 0:
                    after = seen[b + 5:]
                    e = after.find("@@E")
                    if e >= 0 and "@@" in after[e + 3:]:
                        return int(after[e + 3:].split("@@")[0] or -1)
        raise SystemExit(f"{self.mode}: no answer from the guest's shell to {cmd!r}")

    def type_line(self, cmd):
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(self.console)
            c.settimeout(0.1)
            c.sendall((cmd + "\n").encode())
            t = time.monotonic()
            while time.monotonic() - t < 1:
                try:
                    c.recv(4096)
                except socket.timeout:
                    pass

    def outage_after(self, t0, limit):
        """The outage that began after `t0`: (its start, when the service
        answered again); None if it never did. It starts at `t0`, or at the
        last answer before the first unanswered request when the service
        still answered after `t0` (a hung task: the kernel panics when its
        detector fires)."""
        t = time.monotonic()
        while time.monotonic() - t < limit:
            answers = [a for a in list(self.answers) if a[0] > t0]
            down = next((i for i, (_, ok) in enumerate(answers) if not ok), None)
            if down is not None:
                up = next((when for when, ok in answers[down:] if ok), None)
                if up is not None:
                    last = max((when for when, ok in answers[:down] if ok), default=t0)
                    return last, up
            time.sleep(0.1)
        return None

    def stop(self):
        self.polling = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        clean = all(subprocess.run(["e2fsck", "-fn", d], capture_output=True).returncode == 0
                    for d in (self.root, self.data))
        return self.proc.returncode == 0, clean


def experiment(g, kinds, faults):
    g.wait_event("ready", 1, 900)
    g.poller.start()
    out = []
    for i in range(faults):
        kind = kinds[i % len(kinds)]
        name = f"/srv/data/before-{g.mode}-{i}"
        if g.shell(f"date > {name} && sync") != 0:
            raise SystemExit(f"{g.mode}: the guest could not write its data disk")
        t0 = time.time()
        g.type_line(KINDS[kind])
        outage = g.outage_after(t0, 900)
        recovered = outage is not None
        downtime = round(outage[1] - outage[0], 3) if outage else None
        data_lost = True
        if recovered:
            time.sleep(1)
            data_lost = g.shell(f"test -s {name}") != 0
        out.append({"kind": kind, "recovered": recovered, "downtime_s": downtime, "data_lost": data_lost,
                    "detected_after_s": round(outage[0] - t0, 3) if outage else None})
        print(f"{g.mode:>6} {kind:>10}: {'recovered' if recovered else 'NOT recovered'}"
              f"{'' if downtime is None else f' in {downtime:.2f} s'}{', data lost' if data_lost else ''}",
              file=sys.stderr)
        # Past --retry-after: the next failure is one of a recovered VM.
        time.sleep(7)
    return out


def per_second(answers, t0, secs):
    """Requests answered in each second from `t0`."""
    per = [0] * secs
    for when, ok in answers:
        if ok and 0 <= when - t0 < secs:
            per[int(when - t0)] += 1
    return per


def svg(series, path):
    """Requests answered per second over each run, one chart per run, on
    one time scale."""
    w, h, pad = 900, 160, 40
    secs = max((len(v) for _, v in series), default=1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{(h + pad) * len(series) + pad}">',
             '<style>text{font:12px sans-serif}</style>']
    for n, (mode, per) in enumerate(series):
        y0 = pad + n * (h + pad)
        x = lambda s: pad + (w - 2 * pad) * s / max(secs, 1)
        y = lambda v: y0 + h - h * min(v, 10) / 10
        pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in enumerate(per))
        parts.append(f'<text x="{pad}" y="{y0 - 6}">{mode}: requests answered per second '
                     f'(of 10; {len(per)} s, scale {secs} s)</text>')
        parts.append(f'<rect x="{pad}" y="{y0}" width="{w - 2 * pad}" height="{h}" fill="none" stroke="#999"/>')
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{"#1b7" if mode == "phase" else "#c33"}"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pbr", required=True)
    p.add_argument("--guest", required=True)
    p.add_argument("--faults", type=int, default=len(KINDS))
    p.add_argument("--hang-after", type=float, default=0.5)
    p.add_argument("--mem", type=int, default=512)
    p.add_argument("--json")
    p.add_argument("--svg", default="fault-injection.svg")
    a = p.parse_args()
    guest = json.load(open(a.guest))
    kinds = list(KINDS)
    work = tempfile.mkdtemp(prefix="pbr-faults-")
    results, runs = {}, []
    try:
        for mode in ("phase", "normal"):
            g = Guest(a.pbr, guest, a.mem, mode, work, a.hang_after)
            try:
                results[mode] = experiment(g, kinds, a.faults)
            finally:
                stopped, clean = g.stop()
                runs.append((mode, g.answers))
            results[mode + "_stop"] = {"stopped": stopped, "fsck_clean": clean}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    series = []
    for mode, answers in runs:
        t0 = answers[0][0] if answers else 0
        series.append((mode, per_second(answers, t0, int(answers[-1][0] - t0) + 1 if answers else 0)))
    svg(series, a.svg)
    failures = []
    for f, n in zip(results["phase"], results["normal"]):
        failures.append({"kind": f["kind"], "recovered": f["recovered"], "downtime_s": f["downtime_s"],
                         "normal_reboot_s": n["downtime_s"], "fsck_clean": results["phase_stop"]["fsck_clean"],
                         "data_lost": f["data_lost"]})
    print(f"{'kind':>10} {'recovered':>10} {'phase-based s':>14} {'normal reboot s':>16} {'shorter':>8}")
    for kind in kinds:
        fs = [f for f in failures if f["kind"] == kind]
        if not fs:
            continue
        ph = [f["downtime_s"] for f in fs if f["downtime_s"] is not None]
        nr = [f["normal_reboot_s"] for f in fs if f["normal_reboot_s"] is not None]
        mp, mn = (statistics.median(ph) if ph else float("nan")), (statistics.median(nr) if nr else float("nan"))
        print(f"{kind:>10} {sum(f['recovered'] for f in fs):>5}/{len(fs):<4} {mp:>14.2f} {mn:>16.2f} "
              f"{100 * (1 - mp / mn):>7.1f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"failures": failures, "stops": {k: v for k, v in results.items() if k.endswith("_stop")},
                       "answered_per_second": dict(series)}, f, indent=2)
    ok = [f for f in failures if f["recovered"] and not f["data_lost"]]
    ph = [f["downtime_s"] for f in ok]
    nr = [f["normal_reboot_s"] for f in ok if f["normal_reboot_s"] is not None]
    mp, mn = statistics.median(ph) if ph else float("nan"), statistics.median(nr) if nr else float("nan")
    print(f"picture: {a.svg}; disks clean: phase {results['phase_stop']['fsck_clean']}, "
          f"normal {results['normal_stop']['fsck_clean']}")
    print(f"fault injection: {len(ok)}/{len(failures)} failures recovered, downtime {mp:.2f} s vs normal reboot "
          f"{mn:.2f} s ({100 * (1 - mp / mn):.1f}% shorter)")


if __name__ == "__main__":
    main()
