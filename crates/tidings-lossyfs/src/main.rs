//! `tidings-lossyfs MOUNTPOINT --control SOCKET [--torn-writes SEED]`: mounts an empty
//! lossy disk on MOUNTPOINT and takes commands, one per line, on the Unix socket SOCKET:
//!
//! - `cut`: cut the power (nothing more becomes durable; every request fails with EIO);
//! - `restore`: unmount, power on (the visible state becomes the durable one) and mount
//!   again; refused while a process has a file open there;
//! - `stats`: what the file system did;
//! - `quit`: unmount and exit.
//!
//! Each command is answered with one line starting with `ok` or `error`.
//! (`socat - UNIX-CONNECT:SOCKET` or `nc -U SOCKET` make a client.)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use tidings_lossyfs::{LossyDisk, Mount};

const USAGE: &str = "usage: tidings-lossyfs MOUNTPOINT --control SOCKET [--torn-writes SEED]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings-lossyfs: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    mountpoint: PathBuf,
    control: PathBuf,
    torn: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut mountpoint = None;
    let mut control = None;
    let mut torn = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--control") => control = args.next().map(PathBuf::from),
            Some("--torn-writes") => {
                let seed = args.next().and_then(|s| s.to_str()?.parse().ok());
                torn = Some(seed.ok_or("--torn-writes wants a number (the seed)")?);
            }
            Some("-h" | "--help") => return Err(USAGE.to_owned()),
            _ if mountpoint.is_none() => mountpoint = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}; {USAGE}")),
        }
    }
    Ok(Args {
        mountpoint: mountpoint.ok_or(USAGE)?,
        control: control.ok_or(USAGE)?,
        torn,
    })
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let disk = match args.torn {
        Some(seed) => LossyDisk::with_torn_writes(seed),
        None => LossyDisk::new(),
    };
    let mut mount = disk.mount(&args.mountpoint).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control)
        .map_err(|e| format!("cannot listen on {}: {e}", args.control.display()))?;
    println!(
        "tidings-lossyfs: mounted on {}, commands on {}",
        args.mountpoint.display(),
        args.control.display()
    );
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(mut out) = conn.try_clone() else {
            continue;
        };
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            let (reply, quit) = command(line.trim(), &disk, &mut mount, &args);
            if writeln!(out, "{reply}").is_err() {
                break;
            }
            if quit {
                let _ = std::fs::remove_file(&args.control);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs one command; returns the reply and whether to exit.
fn command(cmd: &str, disk: &LossyDisk, mount: &mut Mount, args: &Args) -> (String, bool) {
    match cmd {
        "cut" => {
            disk.cut_power();
            ("ok the power is off".to_owned(), false)
        }
        "restore" => {
            if let Err(e) = mount.unmount() {
                return (format!("error {e}"), false);
            }
            let report = disk.power_on();
            match disk.mount(&args.mountpoint) {
                Ok(m) => {
                    *mount = m;
                    (format!("ok {report:?}"), false)
                }
                Err(e) => (format!("error {e}; exiting"), true),
            }
        }
        "stats" => (format!("ok {:?}", disk.stats()), false),
        "quit" => match mount.unmount() {
            Ok(()) => ("ok unmounted".to_owned(), true),
            Err(e) => (format!("error {e}"), false),
        },
        other => (
            format!("error unknown command {other:?}: use cut, restore, stats or quit"),
            false,
        ),
    }
}
