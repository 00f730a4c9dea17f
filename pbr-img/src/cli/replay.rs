//! `pbr-img replay`: restore an image into a hypervisor.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use pbr_format::Image;
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::fmt::count;
use super::report::{Report, print};
use pbr_replay::kvm::{Exit, KvmAdapter};
use pbr_replay::qemu::QemuAdapter;
use pbr_replay::qemu::args::{machine_args, recorded_args};
use pbr_replay::{ReplayReport, replay};

/// The arguments of `replay`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// The hypervisor.
    #[arg(long, value_enum, default_value = "qemu")]
    adapter: Adapter,
    /// The QEMU binary (qemu adapter).
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Stop after this many guest I/O writes (kvm adapter).
    #[arg(long, default_value_t = 100)]
    max_exits: u64,
    /// Stop after this many seconds (default: when the guest stops).
    #[arg(long = "for", value_name = "SECONDS")]
    seconds: Option<f64>,
    /// Print the replay report as JSON.
    #[arg(long)]
    json: bool,
    /// QEMU machine arguments, overriding the image's restore.cmdline.
    #[arg(last = true)]
    qemu_args: Vec<String>,
}

/// Hypervisors `replay` drives.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Adapter {
    /// QEMU, from the stream `export --to qemu` writes.
    Qemu,
    /// KVM through /dev/kvm (images written by a VMM with its own devices).
    Kvm,
}

/// What the replay restored.
struct Replayed(ReplayReport);

impl Report for Replayed {
    fn json(&self) -> Value {
        let r = &self.0;
        json!({"mapped_bytes": r.mapped_bytes, "copied_pages": r.copied_pages, "zero_pages": r.zero_pages,
               "vcpus": r.vcpus, "devices": r.devices, "not_taken": r.not_taken})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = &self.0;
        writeln!(
            w,
            "replayed: {} bytes mapped from the image, {} copied, {}, {}, {}",
            r.mapped_bytes,
            count(r.copied_pages, "page"),
            count(r.zero_pages, "zero page"),
            count(r.vcpus as u64, "vCPU"),
            count(r.devices as u64, "device blob")
        )?;
        for n in &r.not_taken {
            writeln!(w, "not taken: {n}")?;
        }
        Ok(())
    }
}

/// Copies QEMU's standard output (the guest's console) to ours as it
/// comes, until QEMU closes it or ours is closed.
fn forward(mut console: std::process::ChildStdout) {
    let mut buf = [0u8; 4096];
    let mut out = std::io::stdout();
    loop {
        match console.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Runs `replay`.
pub fn run(a: Args) -> Result<ExitCode> {
    let deadline = a.seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let (image, adapter, qemu, args, max_exits, as_json) =
        (&a.image, a.adapter, a.qemu, a.qemu_args, a.max_exits, a.json);
    let img = Image::open(image)?;
    let file = File::open(image).map_err(|e| pbr_tools::Error::io(format!("cannot open {}", image.display()), e))?;
    match adapter {
        Adapter::Qemu => {
            let mut args = if !args.is_empty() {
                args
            } else if let Some(recorded) = recorded_args(&img) {
                recorded
            } else {
                let built = machine_args(&img).ok_or_else(|| {
                    Error::Usage(
                        "the image records neither restore.cmdline nor its machine type and RAM size: give QEMU's machine arguments after --".into(),
                    )
                })?;
                eprintln!(
                    "note: the image records no restore.cmdline: starting QEMU with `{}` (give the machine's arguments after -- if it had other devices)",
                    built.join(" ")
                );
                built
            };
            if !args.iter().any(|x| x == "-serial" || x == "-nographic") {
                // Show the guest's console here (the stream does not use
                // QEMU's standard input).
                args.extend(["-serial".to_string(), "stdio".to_string()]);
            }
            let mut q = QemuAdapter::new(image, &qemu, args)?;
            q.pipe_stdout();
            let report = replay(&img, &file, &mut q)?;
            let child = q.process().ok_or_else(|| pbr_replay::Error::Guest("QEMU did not start".into()))?.child();
            let console = child.stdout.take();
            print(&Replayed(report), as_json)?;
            eprintln!("guest resumed");
            // The console follows the summary: what the guest printed so
            // far waited in the pipe.
            let forwarder = console.map(|c| std::thread::spawn(move || forward(c)));
            let code = loop {
                if let Some(status) = child.try_wait().map_err(|e| pbr_tools::Error::io("waiting for QEMU", e))? {
                    break if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // Time is up: the guest is stopped; the replay itself succeeded.
                    break ExitCode::SUCCESS;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            // QEMU stopped: the forwarder reaches the pipe's end and has
            // written all of the console before the tool exits.
            drop(q);
            if let Some(f) = forwarder {
                let _ = f.join();
            }
            Ok(code)
        }
        Adapter::Kvm => {
            let mut vm = KvmAdapter::new()?;
            let report = replay(&img, &file, &mut vm)?;
            print(&Replayed(report), as_json)?;
            for n in &vm.notes {
                eprintln!("note: {n}");
            }
            let id = img.vcpus().first().map(|v| v.id()).unwrap_or_default();
            for _ in 0..max_exits {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                match vm.run_until_io(id)? {
                    Exit::IoOut { port, data } => {
                        let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
                        outln!("out port {port:#x}: {}", hex.join(" "));
                    }
                    Exit::Halt => {
                        outln!("guest halted");
                        break;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
