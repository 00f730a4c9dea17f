//! A standby QEMU started beside the VM it will replace: `pbr-img run
//! --standby` keeps one ready while the VM runs. Both QEMUs run the same
//! command line, so what binds a host resource (a forwarded port, a
//! listening socket, a file a chardev truncates) would be taken from the
//! running VM. The standby gets its own stand-ins, and takes the real ones
//! over once the running VM is gone ([`Takeover::apply`]). Disks need
//! nothing: a QEMU waiting for a migration holds its images inactive (no
//! write lock) until it runs.

use std::path::Path;

use pbr_replay::qemu::process::QemuProcess;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// What the standby takes over from the running VM once it is gone.
#[derive(Clone, Debug, PartialEq)]
pub enum Takeover {
    /// A user network's forwarded port: added back (`hostfwd_add`).
    Hostfwd {
        /// The `-netdev` id.
        netdev: String,
        /// The rule as the command line gave it.
        rule: String,
    },
    /// A chardev whose backend binds or truncates something of the host:
    /// changed to that backend (`chardev-change`).
    Chardev {
        /// The chardev id.
        id: String,
        /// Its backend, as QMP's `chardev-change` takes it.
        backend: Value,
    },
}

/// A command line for a standby beside the running VM.
#[derive(Clone, Debug, PartialEq)]
pub struct Beside {
    /// The arguments the standby runs.
    pub args: Vec<String>,
    /// What it takes over once the running VM is gone.
    pub takeover: Vec<Takeover>,
}

/// `args` made fit to run beside a QEMU running `args` itself, the
/// stand-ins' files in `dir`; or why it cannot be (an option that binds a
/// host resource and cannot be taken over).
pub fn beside(args: &[String], dir: &Path) -> std::result::Result<Beside, String> {
    let mut out = Beside { args: Vec::with_capacity(args.len()), takeover: Vec::new() };
    // Chardevs that a monitor runs on: QEMU's monitors take no
    // `chardev-change`.
    let mut monitors = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let option = a.trim_start_matches('-');
        match option {
            "nographic" => return Err(format!("{a} puts the console on standard input, which only one QEMU has")),
            "mon" | "object" => {
                let value = it.next().ok_or_else(|| format!("{a} has no value"))?;
                let parts = split(value);
                if option == "mon" {
                    monitors.extend(find(&parts, "chardev"));
                } else if parts
                    .first()
                    .is_some_and(|p| p == "memory-backend-file" || p == "qom-type=memory-backend-file")
                    && find(&parts, "share").is_some_and(|v| is_on(&v))
                {
                    return Err(format!(
                        "{a} {value}: the waiting QEMU would load its guest into the VM's shared memory"
                    ));
                }
                out.args.extend([a.clone(), value.clone()]);
            }
            "netdev" | "chardev" => {
                let value = it.next().ok_or_else(|| format!("{a} has no value"))?;
                let value = match option {
                    "netdev" => netdev(value, &mut out.takeover)?,
                    _ => chardev(value, dir, &mut out.takeover)?,
                };
                out.args.extend([a.clone(), value]);
            }
            "nic" | "net" | "serial" | "parallel" | "monitor" | "qmp" | "qmp-pretty" | "vnc" | "spice" | "gdb"
            | "pidfile" | "incoming" | "daemonize" | "debugcon" | "display" => {
                let value = it.next().map(String::as_str).unwrap_or_default();
                if option == "monitor" {
                    monitors.extend(value.strip_prefix("chardev:").map(str::to_owned));
                }
                if host_free(option, value) {
                    out.args.extend([a.clone(), value.to_owned()]);
                } else {
                    return Err(format!(
                        "{a} {value} binds something of the host a second QEMU cannot share (use -netdev and \
                         -chardev, which a standby takes over)"
                    ));
                }
            }
            _ => out.args.push(a.clone()),
        }
    }
    for t in &out.takeover {
        if let Takeover::Chardev { id, .. } = t
            && monitors.contains(id)
        {
            return Err(format!("-chardev {id} carries a monitor, which cannot be moved to its real backend"));
        }
    }
    Ok(out)
}

/// Whether a QEMU boolean option value is on.
fn is_on(v: &str) -> bool {
    matches!(v, "on" | "yes" | "true" | "y")
}

/// Whether `-option value` leaves the host alone: a serial port or monitor
/// on a chardev (`chardev:ID`), a null, pty or no device, a `-nic none`.
fn host_free(option: &str, value: &str) -> bool {
    match option {
        "serial" | "parallel" | "monitor" => {
            value.starts_with("chardev:") || matches!(value, "none" | "null" | "pty" | "vc")
        }
        "nic" | "net" => value == "none",
        "display" => value == "none",
        _ => false,
    }
}

/// A user network's `-netdev` value without its forwarded ports, which
/// become takeovers; any other network is refused.
fn netdev(value: &str, takeover: &mut Vec<Takeover>) -> std::result::Result<String, String> {
    let parts = split(value);
    let user = parts.first().is_some_and(|p| p == "user" || p == "type=user");
    if !user {
        return Err(format!("-netdev {value}: a second QEMU cannot open it while the VM runs (user networking can)"));
    }
    let id = find(&parts, "id").ok_or_else(|| format!("-netdev {value} has no id"))?;
    if find(&parts, "guestfwd").is_some() {
        return Err(format!("-netdev {value}: guestfwd runs a host command a second QEMU would run twice"));
    }
    let mut kept = Vec::new();
    for p in parts {
        match p.strip_prefix("hostfwd=") {
            Some(rule) => takeover.push(Takeover::Hostfwd { netdev: id.clone(), rule: rule.to_owned() }),
            None => kept.push(p),
        }
    }
    Ok(join(&kept))
}

/// A `-chardev` value whose listening socket or truncated file is a
/// stand-in in `dir`; the real backend becomes a takeover.
fn chardev(value: &str, dir: &Path, takeover: &mut Vec<Takeover>) -> std::result::Result<String, String> {
    let parts = split(value);
    let backend = parts.first().cloned().unwrap_or_default();
    let id = find(&parts, "id").ok_or_else(|| format!("-chardev {value} has no id"))?;
    let server = find(&parts, "server").is_some_and(|v| is_on(&v)) || parts.iter().any(|p| p == "server");
    // Only what the takeover carries over: any other option (mux, telnet,
    // websocket, TLS, ...) would be lost on the real backend.
    let known: &[&str] = match backend.as_str() {
        "socket" => &["id", "path", "host", "port", "server", "wait", "nowait", "ipv4", "ipv6", "logfile", "logappend"],
        "file" => &["id", "path", "append", "logfile", "logappend"],
        "stdio" => return Err(format!("-chardev {value}: standard input is the VM's, not the waiting QEMU's")),
        _ => &["id", "logfile", "logappend"],
    };
    // (A client socket without a log binds nothing: it is kept as it is.)
    let taken_over = backend != "socket" || server || find(&parts, "logfile").is_some();
    if let Some(p) = parts[1..].iter().find(|p| !known.contains(&p.split('=').next().unwrap_or_default()))
        && taken_over
    {
        return Err(format!("-chardev {value}: a waiting QEMU cannot take over {p}"));
    }
    let logfile = find(&parts, "logfile");
    let stand_in = |what: &str| dir.join(format!("standby-{id}.{what}")).display().to_string();
    let mut real = match backend.as_str() {
        "socket" if server => {
            let addr = socket_addr(&parts, "0.0.0.0")
                .ok_or_else(|| format!("-chardev {value}: a server socket with neither path nor port"))?;
            json!({"type": "socket", "data": {"addr": addr, "server": true, "wait": false}})
        }
        "file" => {
            let path = find(&parts, "path").ok_or_else(|| format!("-chardev {value} has no path"))?;
            json!({"type": "file", "data": {"out": path, "append": true}})
        }
        "socket" | "null" | "pty" | "ringbuf" | "memory" | "vc" if logfile.is_none() => {
            return Ok(value.to_owned());
        }
        "socket" | "null" | "pty" | "ringbuf" | "memory" | "vc" => {
            json!({"type": backend, "data": {}})
        }
        other => return Err(format!("-chardev {other} ({value}): a standby cannot take it over")),
    };
    if backend == "socket" && !server {
        let addr = socket_addr(&parts, "").ok_or_else(|| format!("-chardev {value}: no path or port"))?;
        real["data"] = json!({"addr": addr, "server": false});
    }
    let mut kept = Vec::new();
    for p in parts {
        let key = p.split('=').next().unwrap_or_default().to_owned();
        match key.as_str() {
            // The stand-in never waits for a client: QEMU would not start.
            "wait" | "nowait" if server => {}
            "path" if backend == "socket" && server => kept.push(format!("path={}", stand_in("sock"))),
            "path" if backend == "file" => kept.push(format!("path={}", stand_in("out"))),
            "port" if backend == "socket" && server => kept.push("port=0".into()),
            "logfile" => kept.push(format!("logfile={}", stand_in("log"))),
            "logappend" => {}
            _ => kept.push(p),
        }
    }
    if backend == "socket" && server {
        kept.push("wait=off".into());
    }
    if let Some(log) = logfile {
        real["data"]["logfile"] = json!(log);
        real["data"]["logappend"] = json!(true);
    }
    takeover.push(Takeover::Chardev { id, backend: real });
    Ok(join(&kept))
}

/// A socket chardev's address as QMP takes it: its unix `path`, else its
/// `host` (`default_host` when none is given) and `port`.
fn socket_addr(parts: &[String], default_host: &str) -> Option<Value> {
    match (find(parts, "path"), find(parts, "port")) {
        (Some(path), _) => Some(json!({"type": "unix", "data": {"path": path}})),
        (None, Some(port)) => {
            let host = find(parts, "host").unwrap_or_else(|| default_host.to_owned());
            Some(json!({"type": "inet", "data": {"host": host, "port": port}}))
        }
        _ => None,
    }
}

impl Takeover {
    /// Takes the resource over in the standby, now that the VM that held
    /// it is gone.
    ///
    /// # Errors
    /// QEMU refused.
    pub fn apply(&self, qemu: &mut QemuProcess) -> Result<()> {
        match self {
            Takeover::Hostfwd { netdev, rule } => {
                let line = format!("hostfwd_add {netdev} {rule}");
                let said = qemu.cmd("human-monitor-command", json!({"command-line": line}), "taking over a port")?;
                match said.as_str().map(str::trim).filter(|s| !s.is_empty()) {
                    Some(complaint) => Err(Error::Guest(format!("{line}: {complaint}"))),
                    None => Ok(()),
                }
            }
            Takeover::Chardev { id, backend } => {
                qemu.cmd("chardev-change", json!({"id": id, "backend": backend}), "taking over a chardev")?;
                Ok(())
            }
        }
    }
}

/// The comma-separated options of a QEMU option value (`,,` is a comma).
fn split(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                part.push(',');
            }
            ',' => parts.push(std::mem::take(&mut part)),
            c => part.push(c),
        }
    }
    parts.push(part);
    parts
}

/// Options joined back, their commas doubled.
fn join(parts: &[String]) -> String {
    parts.iter().map(|p| p.replace(',', ",,")).collect::<Vec<_>>().join(",")
}

/// The value of `key=` among `parts`.
fn find(parts: &[String], key: &str) -> Option<String> {
    parts.iter().find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    /// The distribution guest's command line: its forwarded port is added
    /// back, its console socket and log get stand-ins, the rest is kept.
    #[test]
    fn ports_and_consoles_get_stand_ins() {
        let line = "-m 512 -drive file=/d/root.raw,format=raw,if=none,id=root \
                    -netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80 -device virtio-net-pci,netdev=net0 \
                    -chardev socket,id=con,path=/run/con,,1.sock,server=on,wait=off,logfile=/l/console.log \
                    -serial chardev:con";
        let b = beside(&args(line), Path::new("/w")).unwrap();
        assert_eq!(b.args[5], "user,id=net0");
        assert_eq!(b.args[9], "socket,id=con,path=/w/standby-con.sock,server=on,logfile=/w/standby-con.log,wait=off");
        assert_eq!(b.args[..4], args(line)[..4], "the disks are kept");
        assert_eq!(b.takeover[0], Takeover::Hostfwd { netdev: "net0".into(), rule: "tcp:127.0.0.1:8080-:80".into() });
        let Takeover::Chardev { id, backend } = &b.takeover[1] else { panic!("{:?}", b.takeover) };
        assert_eq!(id, "con");
        assert_eq!(backend["data"]["addr"]["data"]["path"], "/run/con,1.sock");
        assert_eq!(backend["data"]["logfile"], "/l/console.log");
        assert_eq!(backend["data"]["logappend"], true);
    }

    #[test]
    fn files_and_tcp_servers_are_taken_over() {
        let line = "-chardev file,id=log,path=/var/log/vm.log -chardev socket,id=t,host=127.0.0.1,port=4444,server=on";
        let b = beside(&args(line), Path::new("/w")).unwrap();
        assert_eq!(b.args[1], "file,id=log,path=/w/standby-log.out");
        assert_eq!(b.args[3], "socket,id=t,host=127.0.0.1,port=0,server=on,wait=off", "a stand-in never waits");
        let Takeover::Chardev { backend, .. } = &b.takeover[1] else { panic!() };
        assert_eq!(backend["data"]["addr"], json!({"type": "inet", "data": {"host": "127.0.0.1", "port": "4444"}}));
    }

    /// What binds the host and cannot be taken over is refused with the
    /// option named; what binds nothing is kept as it is.
    #[test]
    fn what_cannot_be_shared_is_named() {
        for line in ["-vnc :1", "-qmp unix:/q.sock,server=on", "-serial tcp::4444,server", "-pidfile /p"] {
            let e = beside(&args(line), Path::new("/w")).unwrap_err();
            assert!(e.starts_with(line), "{e}");
        }
        let e = beside(&args("-netdev user,id=n,guestfwd=tcp:10.0.2.100:1-cmd:x"), Path::new("/w")).unwrap_err();
        assert!(e.contains("guestfwd"), "{e}");
        let e = beside(&args("-netdev tap,id=t,ifname=tap0"), Path::new("/w")).unwrap_err();
        assert!(e.contains("cannot open it"), "{e}");
        let kept = "-serial chardev:c -chardev pty,id=c -netdev user,id=n -nic none";
        let b = beside(&args(kept), Path::new("/w")).unwrap();
        assert_eq!(b.args, args(kept));
        assert!(b.takeover.is_empty());
    }

    /// What the takeover would lose or QEMU would refuse is refused before
    /// a waiting QEMU starts.
    #[test]
    fn what_a_takeover_would_lose_is_refused() {
        let cases = [
            ("-chardev socket,id=c,path=/s,server=on,wait=off,mux=on", "mux=on"),
            ("-chardev socket,id=c,path=/s,server=on,tls-creds=t0", "tls-creds=t0"),
            ("-chardev socket,id=c,port=23,server=on,telnet=on", "telnet=on"),
            ("-chardev stdio,id=c", "standard input"),
            ("-nographic", "standard input"),
            ("-debugcon file:/tmp/ovmf.log", "binds something"),
            ("-display vnc=:1", "binds something"),
            ("-object memory-backend-file,id=m,mem-path=/dev/shm/vm,share=on,size=1G", "shared memory"),
            ("-chardev socket,id=m,path=/s,server=on,wait=off -mon chardev=m", "carries a monitor"),
            ("-chardev socket,id=m,path=/s,server=y -monitor chardev:m", "carries a monitor"),
        ];
        for (line, want) in cases {
            let e = beside(&args(line), Path::new("/w")).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
        let kept = "-object memory-backend-file,id=m,mem-path=/hugepages,size=1G -display none \
                    -chardev socket,id=c,path=/s,reconnect=5";
        assert_eq!(beside(&args(kept), Path::new("/w")).unwrap().args, args(kept), "a client socket binds nothing");
    }

    #[test]
    fn doubled_commas_survive() {
        assert_eq!(split("a,b=c,,d,e"), ["a", "b=c,d", "e"]);
        assert_eq!(join(&split("a,b=c,,d,e")), "a,b=c,,d,e");
    }
}
