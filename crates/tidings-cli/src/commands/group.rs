//! `tidings group` and `tidings parked`: consumer groups and their parked messages, on
//! a data directory, on PostgreSQL, or on a server (`--server`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tidings::group::{
    GroupDescription, GroupSettings, Groups, ParkedSelection, Settlement, StartFrom, Strategy,
};

use super::table::{print_table, short};
use super::target::Target;
use crate::remote_groups::RemoteGroups;
use crate::store::{StoreSpec, open_embedded};

/// Options of `tidings group`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List the groups.
    List(Only),
    /// Show one group: checkpoint, lag, members, in-flight and parked counts.
    Info(Named),
    /// Create a group.
    Create(Define),
    /// Change a group's settings (those given; the rest stay).
    Update(Define),
    /// Delete a group, with its settled state and its parked messages.
    Delete(Named),
    /// Be a member of a group: print each message and acknowledge it.
    Consume(ConsumeArgs),
}

#[derive(Debug, Args)]
struct Only {
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct Named {
    /// The group.
    name: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct Define {
    /// The group.
    name: String,
    /// All settings as JSON (`{"strategy": "round-robin", "leaseMs": 5000, ...}`);
    /// the options below override it.
    #[arg(long)]
    settings: Option<String>,
    /// pinned (one member at a time per stream) or round-robin.
    #[arg(long)]
    strategy: Option<String>,
    /// Where a new group starts: beginning, end, or a log position.
    #[arg(long)]
    start: Option<String>,
    /// Only events of this type (repeat for several).
    #[arg(long = "event-type")]
    event_types: Vec<String>,
    /// Only streams whose name starts with this.
    #[arg(long)]
    stream_prefix: Option<String>,
    /// Only streams of this category, the name up to its first `-` (repeat for several).
    #[arg(long = "category")]
    categories: Vec<String>,
    /// A member's lease without a heartbeat, in milliseconds.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// How long a member may hold a message, in milliseconds.
    #[arg(long)]
    message_timeout_ms: Option<u64>,
    /// Retries before a message is parked.
    #[arg(long)]
    max_retries: Option<u32>,
    /// The first retry's backoff, in milliseconds.
    #[arg(long)]
    retry_base_ms: Option<u64>,
    /// The longest retry backoff, in milliseconds.
    #[arg(long)]
    retry_cap_ms: Option<u64>,
    /// Messages read ahead and not yet settled, at most.
    #[arg(long)]
    buffer: Option<usize>,
    /// Park a stream's later events behind a parked one (pinned only): true or false.
    #[arg(long)]
    sequenced_parking: Option<bool>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// The group.
    name: String,
    /// The member's name, as `group info` shows it.
    #[arg(long, default_value = "cli")]
    member: String,
    /// Messages fetched at a time.
    #[arg(long, default_value_t = 16)]
    max: usize,
    /// Stop after this many acknowledgements.
    #[arg(long)]
    count: Option<u64>,
    /// Pretend each message takes this long to handle (to watch leases at work).
    #[arg(long, default_value_t = 0)]
    handle_ms: u64,
    /// Park messages of this event type instead of acknowledging them.
    #[arg(long = "park-type")]
    park_types: Vec<String>,
    #[command(flatten)]
    target: Target,
}

/// Options of `tidings parked`.
#[derive(Debug, Args)]
pub struct ParkedArgs {
    #[command(subcommand)]
    command: ParkedCommand,
}

#[derive(Debug, Subcommand)]
enum ParkedCommand {
    /// List a group's parked messages, oldest first.
    List(ParkedList),
    /// Deliver parked messages again (all, or those given with --id).
    Replay(ParkedPick),
    /// Delete parked messages for good (all, or those given with --id).
    Delete(ParkedPick),
}

#[derive(Debug, Args)]
struct ParkedList {
    /// The group.
    group: String,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct ParkedPick {
    /// The group.
    group: String,
    /// Only these parked messages (repeat); without it, all of them.
    #[arg(long = "id")]
    ids: Vec<u64>,
    #[command(flatten)]
    target: Target,
}

/// A group backend for the target, with what must be closed after.
enum Opened {
    Remote(RemoteGroups),
    Embedded {
        groups: tidings::consumer::HostedGroups<tidings_log::LogStore>,
        store: tidings_log::LogStore,
    },
    Memory(tidings::consumer::HostedGroups<tidings::InMemoryStore>),
    Postgres(tidings_postgres::PgGroups),
}

impl Opened {
    async fn open(t: &Target) -> Result<Self> {
        if let Some(url) = &t.server {
            return Ok(Self::Remote(RemoteGroups::new(url, t.token.clone())?));
        }
        Ok(
            match StoreSpec::from_args(t.store.as_deref(), &t.data, &t.pg)? {
                StoreSpec::Memory => Self::Memory(
                    tidings::consumer::HostedGroups::open(tidings::InMemoryStore::new()).await?,
                ),
                StoreSpec::Dir(dir) => {
                    let store = open_embedded(&dir, crate::store::EmbeddedTuning::default())?;
                    let groups = tidings::consumer::HostedGroups::open(store.clone()).await?;
                    Self::Embedded { groups, store }
                }
                StoreSpec::Postgres(pg) => {
                    Self::Postgres(tidings_postgres::PgGroups::connect(&pg.url).await.map_err(
                        |e| anyhow!("cannot open the consumer groups in PostgreSQL: {e}"),
                    )?)
                }
            },
        )
    }

    fn groups(&self) -> &dyn Groups {
        match self {
            Self::Remote(g) => g,
            Self::Embedded { groups, .. } => groups,
            Self::Memory(g) => g,
            Self::Postgres(g) => g,
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            Self::Remote(_) => {}
            Self::Postgres(g) => g.close().await?,
            Self::Memory(g) => g.shutdown().await?,
            Self::Embedded { groups, store } => {
                groups.shutdown().await?;
                store
                    .close()
                    .await
                    .map_err(|e| anyhow!("closing the store: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Runs `f` with the target's groups, closing them after, whatever `f` returned.
async fn with_groups<T>(t: &Target, f: impl AsyncFnOnce(&dyn Groups) -> Result<T>) -> Result<T> {
    let opened = Opened::open(t).await?;
    let result = f(opened.groups()).await;
    let closed = opened.close().await;
    let value = result?;
    closed?;
    Ok(value)
}

/// `tidings group`.
pub async fn run(a: GroupArgs) -> Result<()> {
    match a.command {
        GroupCommand::List(o) => {
            let list = with_groups(&o.target, async |g| Ok(g.list().await?)).await?;
            if o.target.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            strategy_name(i.settings.strategy).to_owned(),
                            filter_text(&i.settings),
                            i.settings.lease.as_millis().to_string(),
                        ]
                    })
                    .collect();
                print_table(&["GROUP", "STRATEGY", "FILTER", "LEASE MS"], &rows);
            }
        }
        GroupCommand::Info(n) => {
            let d = with_groups(&n.target, async |g| Ok(g.describe(&n.name).await?)).await?;
            if n.target.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_description(&d);
            }
        }
        GroupCommand::Create(d) => {
            let settings = settings_from(&d, GroupSettings::default())?;
            let info =
                with_groups(&d.target, async |g| Ok(g.create(&d.name, settings).await?)).await?;
            if d.target.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("created consumer group {}", info.name);
            }
        }
        GroupCommand::Update(d) => {
            let info = with_groups(&d.target, async |g| {
                let current = g.describe(&d.name).await?.settings;
                let settings = settings_from(&d, current)?;
                Ok(g.update(&d.name, settings).await?)
            })
            .await?;
            if d.target.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("updated consumer group {}", info.name);
            }
        }
        GroupCommand::Delete(n) => {
            with_groups(&n.target, async |g| Ok(g.delete(&n.name).await?)).await?;
            println!("deleted consumer group {}", n.name);
        }
        GroupCommand::Consume(c) => {
            with_groups(&c.target, async |g| consume(g, &c).await).await?;
        }
    }
    Ok(())
}

/// `tidings parked`.
pub async fn run_parked(a: ParkedArgs) -> Result<()> {
    match a.command {
        ParkedCommand::List(l) => {
            let parked =
                with_groups(&l.target, async |g| Ok(g.parked(&l.group, l.limit).await?)).await?;
            if l.target.json {
                println!("{}", serde_json::to_string_pretty(&parked)?);
            } else {
                let rows: Vec<Vec<String>> = parked
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.to_string(),
                            format!("{}@{}", p.event.stream, p.event.revision),
                            p.event.event_type.clone(),
                            p.attempts.to_string(),
                            if p.held {
                                "held".to_owned()
                            } else {
                                String::new()
                            },
                            short(&p.reason, 60),
                            p.parked_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "EVENT",
                        "TYPE",
                        "ATTEMPTS",
                        "",
                        "REASON",
                        "PARKED (UTC)",
                    ],
                    &rows,
                );
            }
        }
        ParkedCommand::Replay(p) => {
            let which = pick(&p.ids);
            let n = with_groups(&p.target, async |g| {
                Ok(g.replay_parked(&p.group, which).await?)
            })
            .await?;
            if p.target.json {
                println!("{}", json!({ "queued": n }));
            } else {
                println!("queued {n} parked message(s) of {} for delivery", p.group);
            }
        }
        ParkedCommand::Delete(p) => {
            let which = pick(&p.ids);
            let n = with_groups(&p.target, async |g| {
                Ok(g.delete_parked(&p.group, which).await?)
            })
            .await?;
            if p.target.json {
                println!("{}", json!({ "deleted": n }));
            } else {
                println!("deleted {n} parked message(s) of {}", p.group);
            }
        }
    }
    Ok(())
}

fn pick(ids: &[u64]) -> ParkedSelection {
    if ids.is_empty() {
        ParkedSelection::All
    } else {
        ParkedSelection::Ids(ids.to_vec())
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Pinned => "pinned",
        Strategy::RoundRobin => "round-robin",
    }
}

fn filter_text(s: &GroupSettings) -> String {
    let mut parts = Vec::new();
    if !s.filter.event_types.is_empty() {
        parts.push(format!("types {}", s.filter.event_types.join(",")));
    }
    if let Some(p) = &s.filter.stream_prefix {
        parts.push(format!("streams {p}*"));
    }
    if !s.filter.categories.is_empty() {
        parts.push(format!("categories {}", s.filter.categories.join(",")));
    }
    if parts.is_empty() {
        "all".to_owned()
    } else {
        parts.join("; ")
    }
}

fn print_description(d: &GroupDescription) {
    let s = &d.settings;
    println!("group       {}", d.name);
    println!(
        "strategy    {}{}",
        strategy_name(s.strategy),
        if s.sequenced_parking {
            ", sequenced parking"
        } else {
            ""
        }
    );
    println!("filter      {}", filter_text(s));
    println!(
        "checkpoint  {} (head {}, lag {})",
        d.checkpoint, d.head, d.lag
    );
    println!("in flight   {}", d.in_flight);
    println!("parked      {}", d.parked);
    println!(
        "settings    lease {} ms, message timeout {} ms, {} retries, buffer {}",
        s.lease.as_millis(),
        s.message_timeout.as_millis(),
        s.max_retries,
        s.buffer
    );
    if d.members.is_empty() {
        println!("members     none");
    } else {
        let rows: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member.clone(),
                    m.name.clone(),
                    m.in_flight.to_string(),
                    m.lease_left.as_millis().to_string(),
                ]
            })
            .collect();
        println!();
        print_table(&["MEMBER", "NAME", "IN FLIGHT", "LEASE LEFT MS"], &rows);
    }
}

/// The settings `d` describes, on top of `base`.
fn settings_from(d: &Define, base: GroupSettings) -> Result<GroupSettings> {
    let mut s = match &d.settings {
        Some(text) => {
            serde_json::from_str(text).context("--settings is not valid group settings")?
        }
        None => base,
    };
    if let Some(v) = &d.strategy {
        s.strategy = match v.as_str() {
            "pinned" => Strategy::Pinned,
            "round-robin" | "roundrobin" => Strategy::RoundRobin,
            other => bail!("--strategy {other}: use pinned or round-robin"),
        };
    }
    if let Some(v) = &d.start {
        s.start = match v.as_str() {
            "beginning" | "start" => StartFrom::Beginning,
            "end" => StartFrom::End,
            n => StartFrom::Position(
                n.parse()
                    .map_err(|_| anyhow!("--start {n}: use beginning, end or a log position"))?,
            ),
        };
    }
    if !d.event_types.is_empty() {
        s.filter.event_types = d.event_types.clone();
    }
    if let Some(p) = &d.stream_prefix {
        s.filter.stream_prefix = Some(p.clone());
    }
    if !d.categories.is_empty() {
        s.filter.categories = d.categories.clone();
    }
    let ms = Duration::from_millis;
    if let Some(v) = d.lease_ms {
        s.lease = ms(v);
    }
    if let Some(v) = d.message_timeout_ms {
        s.message_timeout = ms(v);
    }
    if let Some(v) = d.max_retries {
        s.max_retries = v;
    }
    if let Some(v) = d.retry_base_ms {
        s.retry_base = ms(v);
    }
    if let Some(v) = d.retry_cap_ms {
        s.retry_cap = ms(v);
    }
    if let Some(v) = d.buffer {
        s.buffer = v;
    }
    if let Some(v) = d.sequenced_parking {
        s.sequenced_parking = v;
    }
    s.validate()?;
    Ok(s)
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// `tidings group consume`: joins, keeps the lease alive, prints and settles each
/// message. With `--json`, one line per step: `received` (before handling),
/// `settling` (before the settle is sent) and `acked`/`parked` (after it returned),
/// with the wall-clock time in microseconds.
async fn consume(g: &dyn Groups, c: &ConsumeArgs) -> Result<()> {
    if c.max == 0 {
        bail!("--max must be at least 1");
    }
    let mut lease = g.join(&c.name, &c.member).await?;
    if c.target.json {
        println!("{}", json!({ "kind": "joined", "member": lease.member }));
    } else {
        eprintln!("joined {} as member {}", c.name, lease.member);
    }
    let mut settled: u64 = 0;
    let mut last_beat = tokio::time::Instant::now();
    loop {
        if c.count.is_some_and(|n| settled >= n) {
            break;
        }
        let batch = match g.fetch(&lease, c.max, Duration::from_secs(1)).await {
            Ok(b) => b,
            Err(tidings::group::GroupError::LeaseExpired { .. }) => {
                lease = g.join(&c.name, &c.member).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let line = |kind: &str, m: &tidings::group::GroupMessage| {
            json!({
                "kind": kind, "member": lease.member, "id": m.id,
                "stream": m.event.stream, "revision": m.event.revision,
                "position": m.event.position, "eventId": m.event.event_id,
                "attempt": m.attempt, "replay": m.replay, "at": now_micros() as u64,
            })
        };
        if c.target.json {
            // The whole batch is held from here on, whatever is handled first.
            for m in &batch {
                println!("{}", line("received", m));
            }
        }
        for m in batch {
            if c.handle_ms > 0 {
                let until = tokio::time::Instant::now() + Duration::from_millis(c.handle_ms);
                // Handling takes time; the lease is kept alive meanwhile.
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(c.handle_ms.min(50))).await;
                    if last_beat.elapsed() > lease.lease / 3 {
                        g.heartbeat(&lease).await?;
                        last_beat = tokio::time::Instant::now();
                    }
                }
            }
            let park = c.park_types.contains(&m.event.event_type);
            let how = if park {
                Settlement::Park {
                    reason: format!("parked by {}", c.member),
                }
            } else {
                Settlement::Ack
            };
            if c.target.json {
                println!("{}", line("settling", &m));
            }
            let report = g.settle(&lease, vec![(m.id, how)]).await?;
            last_beat = tokio::time::Instant::now();
            let kind = if !report.stale.is_empty() {
                "stale"
            } else if park {
                "parked"
            } else {
                "acked"
            };
            if c.target.json {
                println!("{}", line(kind, &m));
            } else {
                println!(
                    "{kind:7} {}@{} {} (attempt {}{})",
                    m.event.stream,
                    m.event.revision,
                    m.event.event_type,
                    m.attempt,
                    if m.replay { ", replay" } else { "" }
                );
            }
            if report.stale.is_empty() {
                settled += 1;
            }
        }
    }
    g.leave(&lease).await?;
    Ok(())
}
