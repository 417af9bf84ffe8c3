//! `tidings projection list|status|show|rebuild`: the built-in read models of a local
//! store (`event-types`, `categories`), rebuilt blue/green.
//!
//! A rebuild fills a new version of the read model from the start of the log while the
//! old one stays live, then swaps (see `tidings::projection::VersionedRunner`); the
//! versions live in the store's system streams, so `tidings serve` on the same store
//! serves the new one (`GET /projections/{name}`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tidings::consumer::StoreCheckpoints;
use tidings::projection::builtin::{self, Builtin, Categories, EventTypes};
use tidings::projection::{ProjectionVersions, RebuildProgress, load_versions};
use tidings::{CheckpointStore, EventStore};

use super::progress;
use super::table::print_table;
use crate::store::{StoreSpec, with_store};

/// Options of `tidings projection`.
#[derive(Debug, Args)]
pub struct ProjectionArgs {
    #[command(subcommand)]
    command: ProjectionCommand,
}

#[derive(Debug, Subcommand)]
enum ProjectionCommand {
    /// The built-in projections, with their live versions.
    List(Local),
    /// Versions, checkpoints and distance to the log's end (all projections, or one).
    Status {
        /// A projection's name (all when left out).
        name: Option<String>,
        #[command(flatten)]
        local: Local,
    },
    /// Catch a projection up (saving it) and print its read model.
    Show {
        /// The projection's name.
        name: String,
        #[command(flatten)]
        local: Local,
    },
    /// Rebuild a projection blue/green: fill a new version from the start of the log
    /// while the old one stays live, swap, retire the old one. Resumes an interrupted
    /// rebuild.
    Rebuild {
        /// The projection's name.
        name: String,
        #[command(flatten)]
        local: Local,
    },
}

/// Where the projections live: a local store (a server holds its store locked).
#[derive(Debug, Args)]
struct Local {
    /// Data directory of the embedded store.
    #[arg(long, default_value = "./tidings-data", env = "TIDINGS_DATA")]
    data: PathBuf,
    /// A store URL instead of --data: a directory or postgres://….
    #[arg(long, env = "TIDINGS_STORE")]
    store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pg: crate::store::PgArgs,
}

impl Local {
    fn spec(&self) -> Result<StoreSpec> {
        let spec = StoreSpec::from_args(self.store.as_deref(), &self.data, &self.pg)?;
        if let StoreSpec::Dir(dir) = &spec {
            let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
            if empty {
                bail!(
                    "no store in {} (give the data directory with --data DIR)",
                    dir.display()
                );
            }
        }
        Ok(spec)
    }
}

/// The names `NAME` may take.
fn known(name: &str) -> Result<()> {
    if builtin::BUILTIN.iter().any(|(n, _)| *n == name) {
        return Ok(());
    }
    let names: Vec<&str> = builtin::BUILTIN.iter().map(|(n, _)| *n).collect();
    bail!(
        "no projection {name:?}; the built-in ones are {}",
        names.join(", ")
    )
}

/// `tidings projection`.
pub async fn run(a: ProjectionArgs) -> Result<()> {
    match a.command {
        ProjectionCommand::List(local) => {
            let spec = local.spec()?;
            with_store!(spec, |store| list(&store, local.json).await)
        }
        ProjectionCommand::Status { name, local } => {
            if let Some(n) = &name {
                known(n)?;
            }
            let spec = local.spec()?;
            with_store!(spec, |store| status(&store, name.as_deref(), local.json)
                .await)
        }
        ProjectionCommand::Show { name, local } => {
            known(&name)?;
            let spec = local.spec()?;
            with_store!(spec, |store| match name.as_str() {
                EventTypes::NAME => show::<_, EventTypes>(store, local.json).await,
                _ => show::<_, Categories>(store, local.json).await,
            })
        }
        ProjectionCommand::Rebuild { name, local } => {
            known(&name)?;
            let spec = local.spec()?;
            with_store!(spec, |store| match name.as_str() {
                EventTypes::NAME => rebuild::<_, EventTypes>(store, local.json).await,
                _ => rebuild::<_, Categories>(store, local.json).await,
            })
        }
    }
}

async fn list<S: EventStore>(store: &S, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (name, about) in builtin::BUILTIN {
        let versions = load_versions(store, name).await?;
        rows.push(vec![
            name.to_owned(),
            format!("v{}", versions.live),
            about.to_owned(),
        ]);
        out.push(json!({ "name": name, "live": versions.live, "about": about }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&["PROJECTION", "LIVE", "WHAT"], &rows);
    }
    Ok(())
}

/// One projection's status, as `status` prints it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    name: &'static str,
    versions: ProjectionVersions,
    /// The live version's checkpoint (next position).
    checkpoint: Option<u64>,
    /// An interrupted rebuild's checkpoint.
    building_checkpoint: Option<u64>,
    /// The log's end (head + 1).
    end: u64,
    /// Events after the live checkpoint that the projection has yet to apply (system
    /// streams' records do not count), up to [`BEHIND_CAP`].
    behind: u64,
}

/// `status` counts the events a projection is behind up to this many.
const BEHIND_CAP: u64 = 100_000;

/// Non-system events from position `from` on, counted up to [`BEHIND_CAP`].
async fn events_after<S: EventStore>(store: &S, from: u64) -> Result<u64> {
    let mut pages = tidings::store::CatchUp::new(from, tidings::Filter::all());
    let mut n = 0;
    while let Some(page) = pages.next_page(store).await? {
        n += page.iter().filter(|e| !e.stream.is_system()).count() as u64;
        if n >= BEHIND_CAP {
            return Ok(BEHIND_CAP);
        }
    }
    Ok(n)
}

async fn status<S: EventStore>(store: &S, only: Option<&str>, json: bool) -> Result<()> {
    let checkpoints = StoreCheckpoints::new(store.clone());
    let end = store.head().await?.map_or(0, |h| h + 1);
    let mut all = Vec::new();
    for (name, _) in builtin::BUILTIN {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let versions = load_versions(store, name).await?;
        let checkpoint = checkpoints
            .load(&format!("{name}-v{}", versions.live))
            .await?
            .map(|c| c.next);
        let building_checkpoint = match versions.building {
            Some(b) => checkpoints
                .load(&format!("{name}-v{b}"))
                .await?
                .map(|c| c.next),
            None => None,
        };
        let behind = events_after(store, checkpoint.unwrap_or(0)).await?;
        all.push(Status {
            name,
            versions,
            checkpoint,
            building_checkpoint,
            end,
            behind,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let versions = |vs: &[u32]| {
        if vs.is_empty() {
            "-".to_owned()
        } else {
            vs.iter()
                .map(|v| format!("v{v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            vec![
                s.name.to_owned(),
                format!("v{}", s.versions.live),
                s.checkpoint
                    .map_or_else(|| "never run".to_owned(), |c| c.to_string()),
                s.end.to_string(),
                if s.behind >= BEHIND_CAP {
                    format!("{BEHIND_CAP}+ events")
                } else {
                    format!("{} events", s.behind)
                },
                match s.versions.building {
                    Some(b) => format!(
                        "v{b} interrupted at {}/{} (`rebuild` resumes it)",
                        s.building_checkpoint.unwrap_or(0),
                        s.end
                    ),
                    None => "-".to_owned(),
                },
                versions(&s.versions.retired),
            ]
        })
        .collect();
    print_table(
        &[
            "PROJECTION",
            "LIVE",
            "CHECKPOINT",
            "LOG END",
            "BEHIND",
            "REBUILD",
            "RETIRED",
        ],
        &rows,
    );
    Ok(())
}

/// How a built-in read model prints as a table.
trait Render: Builtin {
    const HEADERS: &'static [&'static str];
    fn rows(&self) -> Vec<Vec<String>>;
}

impl Render for EventTypes {
    const HEADERS: &'static [&'static str] = &["EVENT TYPE", "EVENTS", "LAST POSITION"];
    fn rows(&self) -> Vec<Vec<String>> {
        self.iter()
            .map(|(t, c)| {
                vec![
                    t.to_owned(),
                    c.events.to_string(),
                    c.last_position.to_string(),
                ]
            })
            .collect()
    }
}

impl Render for Categories {
    const HEADERS: &'static [&'static str] = &["CATEGORY", "STREAMS", "EVENTS", "LAST POSITION"];
    fn rows(&self) -> Vec<Vec<String>> {
        self.iter()
            .map(|(name, c)| {
                vec![
                    name.to_owned(),
                    c.streams.to_string(),
                    c.events.to_string(),
                    c.last_position.to_string(),
                ]
            })
            .collect()
    }
}

async fn show<S: EventStore, M: Render>(store: S, json: bool) -> Result<()> {
    let mut runner = builtin::open::<_, M>(store).await?;
    runner.catch_up().await?;
    runner.save_checkpoint().await?;
    let live = runner.live();
    let view = live.read().await;
    if json {
        let out = json!({
            "name": M::NAME,
            "version": view.version(),
            "next": view.next(),
            "model": view.model(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} v{}, up to position {}",
            M::NAME,
            view.version(),
            view.next()
        );
        print_table(M::HEADERS, &view.model().rows());
    }
    Ok(())
}

async fn rebuild<S: EventStore, M: Builtin>(store: S, json: bool) -> Result<()> {
    let end = store.head().await?.map_or(0, |h| h + 1);
    let mut runner = builtin::open::<_, M>(store).await?;
    let from = runner.live_version();
    let target = runner.versions().rebuild_target();
    let resuming = runner.versions().building.is_some();
    eprintln!(
        "{} version {target}: {} while version {from} stays live",
        M::NAME,
        if resuming {
            "resuming an interrupted rebuild"
        } else {
            "building from the start of the log"
        }
    );
    let bar = progress::positions(end, &format!("{} v{target}", M::NAME));
    let report = runner
        .rebuild_with(|p: &RebuildProgress| {
            bar.set_length(p.end);
            bar.set_position(p.position);
        })
        .await;
    bar.finish_and_clear();
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let retired = if report.retired.is_empty() {
        String::new()
    } else {
        let vs: Vec<String> = report.retired.iter().map(|v| format!("v{v}")).collect();
        format!("; retired {}", vs.join(", "))
    };
    println!(
        "{} rebuilt: v{} is live (was v{}), {} events applied{}, up to position {}{retired}",
        M::NAME,
        report.to_version,
        report.from_version,
        report.applied,
        if report.resumed { " (resumed)" } else { "" },
        report.position,
    );
    Ok(())
}
