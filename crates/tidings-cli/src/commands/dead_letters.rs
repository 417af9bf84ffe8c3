//! `tidings dead-letters list|show|replay|delete`: the dead letters a broker keeps for a
//! consumer group.
//!
//! The work is done by [`execute`], generic over any transport with dead letters
//! (`T: Transport + DeadLetters`), and rendered by [`print`]. [`run`] picks the
//! transport from the `--bus` URL's scheme and calls [`run_on`].

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use tidings::transport::{DeadLetter, DeadLetters, Transport};

use super::table::{print_table, short};

/// What to do with the dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// List them: id, topic, event type, attempts, reason, time.
    List,
    /// Print one (`--id`) with its event as JSON.
    Show,
    /// Deliver one (`--id`) or every listed one (`--all`) to the group again.
    Replay,
    /// Remove one (`--id`) or every listed one (`--all`).
    Delete,
}

/// Options of `tidings dead-letters`.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// list, show, replay or delete.
    #[arg(value_enum)]
    pub(crate) action: Action,
    /// The broker: nats://host:4222 or amqp://user:pass@host:5672/%2f.
    #[arg(long, env = "TIDINGS_BUS")]
    pub(crate) bus: String,
    /// The consumer group.
    #[arg(long)]
    pub(crate) group: String,
    /// One dead letter's id (show, replay, delete).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Every dead letter listed (replay, delete), at most --limit.
    #[arg(long, conflicts_with = "id")]
    pub(crate) all: bool,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
    /// NATS: the JetStream stream holding the topics.
    #[arg(long, default_value = "TIDINGS")]
    pub(crate) nats_stream: String,
    /// NATS: the subject prefix of the topics.
    #[arg(long, default_value = "tidings")]
    pub(crate) nats_prefix: String,
    /// RabbitMQ: the topic exchange.
    #[arg(long, default_value = "tidings")]
    pub(crate) exchange: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The dead letters, oldest first.
    Listed(Vec<DeadLetter>),
    /// The one asked for.
    Shown(Box<DeadLetter>),
    /// The ids delivered to the group again.
    Replayed(Vec<String>),
    /// The ids removed.
    Deleted(Vec<String>),
}

/// Runs `action` on `group`'s dead letters in `transport`.
pub async fn execute<T: Transport + DeadLetters>(
    transport: &T,
    action: Action,
    group: &str,
    id: Option<&str>,
    all: bool,
    limit: usize,
) -> Result<Outcome> {
    let targets = |verb: &str| -> Result<Option<String>> {
        match (id, all) {
            (Some(id), false) => Ok(Some(id.to_owned())),
            (None, true) => Ok(None),
            _ => bail!("{verb} needs --id ID or --all"),
        }
    };
    let listed = || async { Ok::<_, anyhow::Error>(transport.dead_letters(group, limit).await?) };
    Ok(match action {
        Action::List => Outcome::Listed(listed().await?),
        Action::Show => {
            let Some(id) = id else {
                bail!("show needs --id ID")
            };
            // Backends list oldest first; look through everything they keep.
            match transport
                .dead_letters(group, usize::MAX)
                .await?
                .into_iter()
                .find(|l| l.id == id)
            {
                Some(l) => Outcome::Shown(Box::new(l)),
                None => bail!("group {group:?} has no dead letter {id:?}"),
            }
        }
        Action::Replay | Action::Delete => {
            let verb = if action == Action::Replay {
                "replay"
            } else {
                "delete"
            };
            let ids = match targets(verb)? {
                Some(id) => vec![id],
                None => listed().await?.into_iter().map(|l| l.id).collect(),
            };
            let mut done = Vec::new();
            for id in ids {
                let found = if action == Action::Replay {
                    transport.replay_dead_letter(group, &id).await?
                } else {
                    transport.delete_dead_letter(group, &id).await?
                };
                if !found && !all {
                    bail!("group {group:?} has no dead letter {id:?}");
                }
                if found {
                    done.push(id);
                }
            }
            if action == Action::Replay {
                Outcome::Replayed(done)
            } else {
                Outcome::Deleted(done)
            }
        }
    })
}

/// One dead letter as JSON.
fn to_json(l: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "id": l.id,
        "group": l.group,
        "topic": l.topic,
        "eventId": l.event.event_id,
        "eventType": l.event.event_type,
        "attempts": l.attempts,
        "reason": l.reason,
        "deadAt": l.dead_at,
        "origin": l.origin.as_ref().map(|o| serde_json::json!({
            "stream": o.stream.to_string(),
            "revision": o.revision,
            "position": o.position,
            "recordedAt": o.recorded_at,
        })),
        "event": l.event,
    })
}

/// The table rows of `letters`.
pub fn rows(letters: &[DeadLetter]) -> Vec<Vec<String>> {
    letters
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.topic.clone(),
                l.event.event_type.clone(),
                l.attempts.to_string(),
                l.dead_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                short(&l.reason, 80),
            ]
        })
        .collect()
}

/// Prints what an action did: a table (or JSON with `json`).
pub fn print(outcome: &Outcome, json: bool) -> Result<()> {
    match outcome {
        Outcome::Listed(letters) if json => {
            let list: Vec<_> = letters.iter().map(to_json).collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Outcome::Listed(letters) => print_table(
            &["ID", "TOPIC", "TYPE", "ATTEMPTS", "DEAD AT (UTC)", "REASON"],
            &rows(letters),
        ),
        Outcome::Shown(l) if json => println!("{}", serde_json::to_string_pretty(&to_json(l))?),
        Outcome::Shown(l) => {
            println!("id:        {}", l.id);
            println!("group:     {}", l.group);
            println!("topic:     {}", l.topic);
            println!("type:      {}", l.event.event_type);
            println!("event id:  {}", l.event.event_id);
            println!("attempts:  {}", l.attempts);
            println!("dead at:   {}", l.dead_at);
            println!("reason:    {}", l.reason);
            if let Some(o) = &l.origin {
                println!(
                    "origin:    {} revision {} position {}",
                    o.stream, o.revision, o.position
                );
            }
            println!("{}", serde_json::to_string_pretty(&l.event)?);
        }
        Outcome::Replayed(ids) | Outcome::Deleted(ids) => {
            let verb = if matches!(outcome, Outcome::Replayed(_)) {
                "replayed"
            } else {
                "deleted"
            };
            if json {
                println!("{}", serde_json::json!({ verb: ids }));
            } else {
                for id in ids {
                    println!("{verb} {id}");
                }
                println!("{} dead letter(s) {verb}", ids.len());
            }
        }
    }
    Ok(())
}

/// `tidings dead-letters` on a connected transport: [`execute`], then [`print`].
#[allow(
    dead_code,
    reason = "run calls it once the NATS and RabbitMQ transports implement DeadLetters"
)]
pub async fn run_on<T: Transport + DeadLetters>(transport: &T, a: &DeadLettersArgs) -> Result<()> {
    let outcome = execute(
        transport,
        a.action,
        &a.group,
        a.id.as_deref(),
        a.all,
        a.limit,
    )
    .await?;
    print(&outcome, a.json)
}

/// `tidings dead-letters`.
///
/// The NATS and RabbitMQ transports keep their dead letters through `DeadLetters`
/// implementations that live in `tidings-nats` and `tidings-rabbitmq`; until those
/// are present, the command reports the bus as unsupported. Wiring one is:
/// connect (`NatsTransport::connect(NatsConfig::new(url).stream(&a.nats_stream)
/// .subject_prefix(&a.nats_prefix))`, `RabbitTransport::connect(RabbitConfig::new(url)
/// .exchange(&a.exchange))`) and call [`run_on`].
pub async fn run(a: DeadLettersArgs) -> Result<()> {
    let scheme = a.bus.split("://").next().unwrap_or_default();
    match scheme {
        "nats" | "tls" | "amqp" | "amqps" => bail!(
            "dead letters on {scheme}:// are not available in this build: the transport does \
             not implement DeadLetters yet"
        ),
        _ => bail!(
            "--bus {:?}: expected nats://… or amqp://…",
            a.bus.split('@').next_back().unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use futures::StreamExt;
    use tidings::transport::{InMemoryTransport, Message, Subscription};
    use tidings::{Enricher, NewEvent};

    async fn with_two_dead_letters() -> InMemoryTransport {
        let bus = InMemoryTransport::new();
        let mut sub = bus
            .subscribe(Subscription::new("billing", "orders"))
            .await
            .unwrap();
        for t in ["A", "B"] {
            let e = Enricher::new("s")
                .enrich(NewEvent::new(t, serde_json::json!({})))
                .unwrap();
            bus.publish(Message::new("orders", e)).await.unwrap();
            let m = sub.next().await.unwrap().unwrap();
            m.dead_letter(format!("{t} failed")).await.unwrap();
        }
        bus
    }

    #[tokio::test]
    async fn list_show_replay_delete() {
        let bus = with_two_dead_letters().await;
        let Outcome::Listed(list) = execute(&bus, Action::List, "billing", None, false, 10)
            .await
            .unwrap()
        else {
            panic!("not a list")
        };
        assert_eq!(list.len(), 2);
        let r = rows(&list);
        assert_eq!(r[0][1..4], ["orders", "A", "1"]);
        assert_eq!(r[0][5], "A failed");
        print(&Outcome::Listed(list.clone()), false).unwrap();
        print(&Outcome::Listed(list.clone()), true).unwrap();
        let args = DeadLettersArgs {
            action: Action::List,
            bus: "memory://".into(),
            group: "billing".into(),
            id: None,
            all: false,
            limit: 10,
            nats_stream: "TIDINGS".into(),
            nats_prefix: "tidings".into(),
            exchange: "tidings".into(),
            json: false,
        };
        run_on(&bus, &args).await.unwrap();

        let shown = execute(&bus, Action::Show, "billing", Some(&list[1].id), false, 10)
            .await
            .unwrap();
        assert_eq!(shown, Outcome::Shown(Box::new(list[1].clone())));
        print(&shown, false).unwrap();
        assert!(
            execute(&bus, Action::Show, "billing", Some("nope"), false, 10)
                .await
                .is_err()
        );
        assert!(
            execute(&bus, Action::Replay, "billing", None, false, 10)
                .await
                .is_err(),
            "replay needs --id or --all"
        );

        let replayed = execute(
            &bus,
            Action::Replay,
            "billing",
            Some(&list[0].id),
            false,
            10,
        )
        .await
        .unwrap();
        assert_eq!(replayed, Outcome::Replayed(vec![list[0].id.clone()]));
        // The replayed message is delivered to the group again, as a first attempt.
        let mut sub = bus
            .subscribe(Subscription::new("billing", "orders"))
            .await
            .unwrap();
        let again = sub.next().await.unwrap().unwrap();
        assert_eq!(
            (again.event().event_type.as_str(), again.attempt()),
            ("A", 1)
        );
        again.ack().await.unwrap();

        let deleted = execute(&bus, Action::Delete, "billing", None, true, 10)
            .await
            .unwrap();
        assert_eq!(deleted, Outcome::Deleted(vec![list[1].id.clone()]));
        assert_eq!(
            execute(&bus, Action::List, "billing", None, false, 10)
                .await
                .unwrap(),
            Outcome::Listed(vec![])
        );
    }

    #[tokio::test]
    async fn unknown_buses_are_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: DeadLettersArgs,
        }
        let cli = Cli::try_parse_from(["x", "list", "--bus", "kafka://h", "--group", "g"]).unwrap();
        assert!(run(cli.a).await.is_err());
        assert!(
            Cli::try_parse_from([
                "x", "replay", "--bus", "nats://h", "--group", "g", "--id", "1", "--all"
            ])
            .is_err()
        );
    }
}
