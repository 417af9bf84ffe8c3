//! `tidings demo --bus URL`: the order flow as three processes, each with its own embedded
//! store, talking over NATS JetStream or RabbitMQ through outbox relays and broker
//! consumers (`order_processing::distributed`).
//!
//! The parent creates the run's consumer groups, starts `tidings demo-service` three
//! times (order, payment, inventory and shipping), waits until the order service reports
//! both demo orders finished, stops the services by closing their standard input, then
//! reads the three stores back and prints the flow and its causation tree across the
//! services.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use order_processing::ServiceConfig;
use order_processing::distributed::{
    Names, Role, ServiceError, Wrap, declare_groups, demo_orders, place_orders, run_service,
};
use tidings::bus::{BoxFuture, HandlerError};
use tidings::saga::{CommandEnvelope, CommandHandler};
use tidings::{EventReader, EventSubscriber, Filter, ReadAll, RecordedEvent, Start};
use tidings_log::LogStore;

/// Options of the hidden `tidings demo-service` (one of the three services).
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// order, payment or fulfilment.
    #[arg(long)]
    pub role: String,
    /// The run's id: part of every topic and group name.
    #[arg(long)]
    pub run: String,
    /// The service's own embedded store.
    #[arg(long)]
    pub data: PathBuf,
    /// nats://HOST:PORT or amqp://USER:PASS@HOST:PORT/VHOST.
    #[arg(long)]
    pub bus: String,
    /// The largest payment the payment service accepts.
    #[arg(long, default_value_t = 100.0)]
    pub payment_limit: f64,
    /// Order service: place the demo's orders, and report each one's end on stdout.
    #[arg(long)]
    pub place_orders: bool,
    /// Payment service: after taking a payment, print `payment-taken <orderId>` and wait
    /// this long before the command is acknowledged (a window for a crash test).
    #[arg(long)]
    pub pause_after_payment_ms: Option<u64>,
}

/// A broker, whichever the URL names.
#[derive(Clone)]
enum Bus {
    Nats(Box<tidings_nats::NatsTransport>),
    Rabbit(tidings_rabbitmq::RabbitTransport),
}

async fn connect(url: &str) -> anyhow::Result<Bus> {
    let scheme = url.split("://").next().unwrap_or_default();
    Ok(match scheme {
        "nats" | "tls" => Bus::Nats(Box::new(
            tidings_nats::NatsTransport::connect(tidings_nats::NatsConfig::new(url)).await?,
        )),
        "amqp" | "amqps" => Bus::Rabbit(
            tidings_rabbitmq::RabbitTransport::connect(tidings_rabbitmq::RabbitConfig::new(url))
                .await?,
        ),
        _ => bail!("--bus {url:?}: expected nats://… or amqp://…"),
    })
}

/// Prints `payment-taken <orderId>` once the payment service has recorded a payment,
/// then holds the command unacknowledged for a while.
struct Announce {
    inner: Arc<dyn CommandHandler>,
    pause: Option<Duration>,
}

impl CommandHandler for Announce {
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.inner.handle(command).await?;
            if command.command.name == order_processing::saga::PROCESS_PAYMENT {
                let order = command.command.payload.to_value()["orderId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                say(&format!("payment-taken {order}"));
                if let Some(pause) = self.pause {
                    tokio::time::sleep(pause).await;
                }
            }
            Ok(())
        })
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `tidings demo-service`: runs one service until its standard input closes.
pub async fn run_service_process(a: ServiceArgs) -> anyhow::Result<()> {
    let role = Role::parse(&a.role)
        .with_context(|| format!("--role {:?}: expected order, payment or fulfilment", a.role))?;
    let names = Names::new(&a.run);
    let store = LogStore::open(&a.data)
        .with_context(|| format!("opening the store in {}", a.data.display()))?;
    let bus = connect(&a.bus).await?;
    let config = ServiceConfig {
        payment_limit: a.payment_limit,
        out_of_stock: vec![],
    };
    let pause = a.pause_after_payment_ms.map(Duration::from_millis);
    let wrap: Option<Wrap> = (role == Role::Payment).then(|| {
        Arc::new(move |inner: Arc<dyn CommandHandler>| {
            Arc::new(Announce { inner, pause }) as Arc<dyn CommandHandler>
        }) as Wrap
    });
    // Stops when standard input closes (the parent's signal) or on Ctrl-C.
    let shutdown = async {
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.clear();
            }
        });
        tokio::select! {
            _ = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let watcher = if a.place_orders {
        let orders = demo_orders(&names);
        place_orders(&store, &orders)
            .await
            .map_err(|e| anyhow::anyhow!("placing the orders: {e}"))?;
        Some(tokio::spawn(report_orders(store.clone(), orders.len())))
    } else {
        None
    };
    say(&format!("ready {}", role.name()));
    let result: Result<(), ServiceError> = match bus {
        Bus::Nats(t) => run_service(role, &names, store.clone(), *t, &config, wrap, shutdown).await,
        Bus::Rabbit(t) => {
            run_service(role, &names, store.clone(), t, &config, wrap, shutdown).await
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    store.close().await?;
    result.map_err(|e| anyhow::anyhow!("the {} service stopped: {e}", role.name()))
}

/// Prints `order <id> completed` or `order <id> cancelled: <reason>` as the saga ends
/// each order.
async fn report_orders(store: LogStore, count: usize) {
    let filter = Filter::all()
        .event_type("OrderCompleted")
        .event_type("OrderCancelled");
    let mut ends = Box::pin(store.subscribe_all(Start::Beginning, filter));
    let mut seen = 0;
    while let Some(Ok(e)) = ends.next().await {
        let data = e.data.to_value();
        let order = data["orderId"].as_str().unwrap_or_default();
        match e.event_type.as_str() {
            "OrderCompleted" => say(&format!("order {order} completed")),
            _ => say(&format!(
                "order {order} cancelled: {}",
                data["reason"].as_str().unwrap_or_default()
            )),
        }
        seen += 1;
        if seen == count {
            say("orders-done");
        }
    }
}

/// A running service process.
struct Service {
    role: Role,
    child: Child,
}

fn spawn(
    role: Role,
    names: &Names,
    root: &Path,
    bus: &str,
    payment_limit: f64,
) -> anyhow::Result<Service> {
    let exe = std::env::current_exe().context("finding the tidings binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("demo-service")
        .args(["--role", role.name(), "--run", names.run(), "--bus", bus])
        .arg("--data")
        .arg(root.join(role.name()))
        .args(["--payment-limit", &payment_limit.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if role == Role::Order {
        cmd.arg("--place-orders");
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the {} service", role.name()))?;
    Ok(Service { role, child })
}

/// `tidings demo --bus URL`: the three services as processes; prints the flow.
pub async fn run(bus_url: &str, data: Option<&Path>, payment_limit: f64) -> anyhow::Result<()> {
    let temp;
    let root = match data {
        Some(d) => d.to_path_buf(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("tidings-demo-bus-")
                .tempdir()
                .context("creating a temporary directory for the services' stores")?;
            temp.path().to_path_buf()
        }
    };
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let names = Names::new(&run);
    let bus = connect(bus_url).await?;
    match &bus {
        Bus::Nats(t) => declare_groups(t.as_ref(), &names).await,
        Bus::Rabbit(t) => declare_groups(t, &names).await,
    }
    .map_err(|e| anyhow::anyhow!("creating the consumer groups: {e}"))?;
    eprintln!(
        "Run {run}: three services on {bus_url}, stores in {}",
        root.display()
    );
    let mut services = Vec::new();
    for role in Role::ALL {
        services.push(spawn(role, &names, &root, bus_url, payment_limit)?);
    }
    let order_out = services[0]
        .child
        .stdout
        .take()
        .context("the order service's output")?;
    let finished = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(order_out).lines() {
            let Ok(line) = line else { break };
            if line == "orders-done" {
                return true;
            }
            eprintln!("  order service: {line}");
        }
        false
    });
    let done = tokio::time::timeout(Duration::from_secs(120), finished).await;
    let started = Instant::now();
    for s in &mut services {
        drop(s.child.stdin.take());
    }
    for s in &mut services {
        let status = s.child.wait()?;
        if !status.success() {
            eprintln!("the {} service exited with {status}", s.role.name());
        }
    }
    match done {
        Ok(Ok(true)) => {}
        _ => bail!("the orders did not finish within 120 s (see the services' output above)"),
    }
    tracing::debug!(stopped_in = ?started.elapsed(), "services stopped");
    print!("{}", render_flow(&read_back(&root).await?));
    Ok(())
}

/// Every non-system event of the three stores, once each (an event another service
/// took in is shown where it was first recorded), oldest first, with its service.
pub async fn read_back(root: &Path) -> anyhow::Result<Vec<(Role, RecordedEvent)>> {
    let mut by_id: HashMap<uuid::Uuid, (Role, RecordedEvent)> = HashMap::new();
    // The order service imports the others' events: read it last so originals win.
    for role in [Role::Payment, Role::Fulfilment, Role::Order] {
        let store = LogStore::open(root.join(role.name()))?;
        for e in store.read_all(ReadAll::new(0, usize::MAX)).await? {
            if !e.stream.is_system() {
                by_id.entry(e.event_id).or_insert((role, e));
            }
        }
        store.close().await?;
    }
    let mut all: Vec<_> = by_id.into_values().collect();
    all.sort_by_key(|(_, e)| (e.timestamp, e.event_id));
    Ok(all)
}

/// The flow as a table (`#`, service, stream, type, what caused it) and the causation
/// tree of each order across the services.
pub fn render_flow(events: &[(Role, RecordedEvent)]) -> String {
    use std::fmt::Write as _;
    let index: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .map(|(i, (_, e))| (e.event_id.to_string(), i + 1))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>3}  {:<10}  {:<32}  {:<20}  CAUSED BY",
        "#", "SERVICE", "STREAM", "TYPE"
    );
    for (i, (role, e)) in events.iter().enumerate() {
        let cause = e.metadata.causation_id.as_ref().map_or_else(
            || "-".to_owned(),
            |c| index.get(c).map_or(c.clone(), |n| format!("#{n}")),
        );
        let _ = writeln!(
            out,
            "{:>3}  {:<10}  {:<32}  {:<20}  {cause}",
            i + 1,
            role.name(),
            e.stream.as_str(),
            e.event_type
        );
    }
    let _ = writeln!(out, "\nCausation across the services:");
    let recorded: Vec<RecordedEvent> = events.iter().map(|(_, e)| e.clone()).collect();
    for line in crate::commands::correlation::causation_tree(&recorded) {
        let _ = writeln!(out, "  {line}");
    }
    out
}
