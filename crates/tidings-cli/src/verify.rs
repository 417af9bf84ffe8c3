//! `tidings verify [--data DIR]`: checks an embedded store without changing it.

use std::path::PathBuf;
use std::process::ExitCode;

use tidings_log::IndexCheck;

/// Arguments of `tidings verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The store's directory.
    #[arg(long, env = "TIDINGS_DATA", default_value = "./tidings-data")]
    data: PathBuf,
}

/// Prints a report; exits 0 when the log and its index are sound, 1 otherwise.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let r = tidings_log::verify(&args.data)?;
    println!("store      {}", r.dir.display());
    println!("segments   {}", r.segments);
    println!("frames     {} (every checksum checked)", r.frames);
    println!("events     {}", r.events);
    println!("streams    {}", r.streams);
    match &r.torn_tail {
        Some(t) => println!(
            "tail       torn write at {} byte {} ({}); never acknowledged, the next open discards it",
            t.file.display(),
            t.offset,
            t.reason
        ),
        None => println!("tail       clean"),
    }
    match &r.damage {
        Some(d) => println!(
            "damage     {} at byte {}: {}",
            d.file.display(),
            d.offset,
            d.reason
        ),
        None => println!("damage     none"),
    }
    match &r.index {
        IndexCheck::Current { covered } => {
            println!("index      snapshot matches the log ({covered} events covered)")
        }
        IndexCheck::Missing => println!("index      no snapshot; the next open rebuilds it"),
        IndexCheck::Stale(why) => {
            println!("index      stale snapshot ({why}); the next open rebuilds it")
        }
        IndexCheck::Mismatch(why) => println!("index      snapshot CONTRADICTS the log: {why}"),
    }
    if r.is_ok() {
        println!("result     ok");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("result     FAILED");
        Ok(ExitCode::FAILURE)
    }
}
