#!/bin/sh
# /init of the phase-reboot test guest (busybox sh, PID 1). Besides its
# phases it reports the files its boot read up to each phase (for
# `pbr-img manifest add` / `select`):
#   PBR-FILE <phase> <path>   one line per regular file of the root file
#                             system whose access time is at or after the
#                             start of /init, sent before PBR-PHASE.
# It also reads /etc/pbr/kernel.conf before the kernel phase and
# /etc/pbr/app.conf only while starting its daemons.
#
# Boot phases, each announced on the control port ttyS1:
#   kernel   - kernel is up, pseudo file systems mounted, nothing else running
#   daemons  - the network is up (virtio NIC, driver modules loaded, address
#              10.0.2.15 of QEMU's user network); syslogd, klogd, crond,
#              telnetd, a worker loop and an "app" holding anon memory are
#              running; data files written and read; the service (httpd)
#              started last, so it answers once everything else is up
# At each phase the guest prints "PBR-PHASE <name> <uptime>" on ttyS1 and then
# blocks until the host sends a line ("go") back, so the host can stop the VM
# and save it while the guest sits quietly in read().
# The service (HTTP on port 8080, GET /index.html -> "ok") is what a client
# outside the guest waits for (the host, through QEMU's user network). After
# the last phase the guest prints "PBR-READY <uptime>" on ttyS1 (its boot
# script is done), then runs the service loop forever.
#
# Kernel command line knobs (read from /proc/cmdline):
#   pbr.kpf=1      dump /proc/kpageflags (gzip|base64) on ttyS1 at each phase
#   pbr.data=MB    size of the data file written to tmpfs (default 8)
#   pbr.anon=MB    random bytes held in memory by the "app" process (default 4)
export PATH=/bin
BOOT=$(date +%s)

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

KPF=0 DATA_MB=8 ANON_MB=4
for w in $(cat /proc/cmdline); do
  case $w in
    pbr.kpf=*)  KPF=${w#*=} ;;
    pbr.data=*) DATA_MB=${w#*=} ;;
    pbr.anon=*) ANON_MB=${w#*=} ;;
  esac
done

# Control port: raw, no echo, so lines pass unchanged both ways.
CTL=/dev/ttyS1
stty -F $CTL 115200 raw -echo
exec 3<>$CTL
say() { echo "$*" >&3; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# The uptime in $UP without starting a process (the ready report is timed).
read_uptime() { read -r UP _ < /proc/uptime; }

kpf_dump() {
  say "PBR-KPF-BEGIN $1"
  gzip -c < /proc/kpageflags | base64 >&3
  say "PBR-KPF-END $1"
}

files_read() {
  find / -xdev -type f 2>/dev/null | while read -r f; do
    [ "$(stat -c %X "$f")" -ge "$BOOT" ] && say "PBR-FILE $1 $f"
  done
}

phase() {
  files_read "$1"
  [ "$KPF" = 1 ] && kpf_dump "$1"
  say "PBR-MEMINFO $1 $(awk '/^(MemTotal|MemFree|Cached|Shmem|AnonPages|Slab|PageTables|KernelStack):/ {
        sub(":", "", $1); printf "%s=%s ", $1, $2 }' /proc/meminfo)"
  say "PBR-PHASE $1 $(uptime_s)"
  read -r reply <&3
  echo "phase $1: host said '$reply'"
}

start_daemons() {
  cat /etc/pbr/app.conf > /dev/null
  hostname pbr-guest
  ip link set lo up
  for m in $(cat /lib/modules/order 2>/dev/null); do
    insmod /lib/modules/$m.ko || echo "pbr init: cannot load $m"
  done
  if [ -e /sys/class/net/eth0 ]; then
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
  else
    echo "pbr init: no eth0: the service cannot be reached from outside"
  fi
  mkdir -p /var/log /var/spool/cron/crontabs /srv/www /srv/data
  syslogd -O /var/log/messages
  klogd
  echo '* * * * * date >> /run/cron.log' > /var/spool/cron/crontabs/root
  crond -c /var/spool/cron/crontabs
  telnetd -p 2323 -l /bin/sh
  # worker: touches a tmpfs file every second
  ( while :; do date > /run/worker.heartbeat; sleep 1; done ) &
  # app: `sort` keeps ANON_MB of random data (as base64 lines) in its heap,
  # waiting for an end of input that never comes
  ( head -c $((ANON_MB * 1048576)) /dev/urandom | base64
    touch /run/app.ready
    while :; do sleep 3600; done ) | sort > /dev/null &
  # data: write a file to tmpfs, then read files back (page cache / dentries)
  dd if=/dev/urandom of=/srv/data/blob bs=1M count="$DATA_MB" 2>/dev/null
  cat /srv/data/blob /bin/busybox > /dev/null
  find / -xdev > /dev/null
  while [ ! -e /run/app.ready ]; do sleep 0.05; done
  logger "pbr: daemons started"
  # the service last: it answers once everything else is up
  echo ok > /srv/www/index.html
  httpd -p 8080 -h /srv/www
}

echo "pbr init: kpf=$KPF data=${DATA_MB}MB anon=${ANON_MB}MB"
cat /etc/pbr/kernel.conf > /dev/null
phase kernel
start_daemons
phase daemons
read_uptime; say "PBR-READY $UP"

# service loop: keeps serving; a heartbeat on the console every 10 s
n=0
while :; do
  sleep 10
  n=$((n + 1))
  echo "pbr alive $n uptime $(uptime_s)"
done
