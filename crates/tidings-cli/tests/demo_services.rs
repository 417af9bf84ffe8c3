//! The order flow as three processes over NATS JetStream: the payment service is
//! SIGKILLed after it has recorded a payment and before it acknowledged the command. The
//! broker delivers the command again to the restarted service (after the consumer's ack
//! wait, 30 s), which answers it again, the orders finish, and the payment store holds
//! exactly one payment per order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use order_processing::distributed::{Names, Role, declare_groups};
use tidings::{EventReader, ReadAll};
use tidings_testkit::services::service_url;

fn spawn(role: Role, run: &str, root: &Path, bus: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("demo-service")
        .args(["--role", role.name(), "--run", run, "--bus", bus])
        .arg("--data")
        .arg(root.join(role.name()))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The lines a child prints, on a channel (so waiting for one can time out).
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line starting with `prefix`; panics after two minutes (a hang guard).
fn wait_for(rx: &mpsc::Receiver<String>, prefix: &str, who: &str) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("{who}: no line starting with {prefix:?} ({e})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_service_killed_mid_flow_takes_the_payment_once_after_a_restart() {
    let test = "a_payment_service_killed_mid_flow_takes_the_payment_once_after_a_restart";
    let Some(bus) = service_url(test, "TIDINGS_NATS_URL") else {
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let names = Names::new(&run);
    let transport = tidings_nats::NatsTransport::connect(tidings_nats::NatsConfig::new(&bus))
        .await
        .unwrap();
    declare_groups(&transport, &names).await.unwrap();
    let root = tempfile::tempdir().unwrap();

    let mut fulfilment = spawn(Role::Fulfilment, &run, root.path(), &bus, &[]);
    let mut payment = spawn(
        Role::Payment,
        &run,
        root.path(),
        &bus,
        &["--pause-after-payment-ms", "600000"],
    );
    let payment_lines = lines(payment.stdout.take().unwrap());
    let mut order = spawn(Role::Order, &run, root.path(), &bus, &["--place-orders"]);
    let order_lines = lines(order.stdout.take().unwrap());

    // The payment is recorded in the payment service's store; its command is not yet
    // acknowledged. Kill the service there.
    let taken = wait_for(&payment_lines, "payment-taken ", "payment service");
    payment.kill().unwrap(); // SIGKILL
    payment.wait().unwrap();
    eprintln!("killed the payment service after: {taken}");

    let mut payment = spawn(Role::Payment, &run, root.path(), &bus, &[]);
    let again = lines(payment.stdout.take().unwrap());
    // The command the killed service never acknowledged comes again (after the
    // consumer's ack wait) and is answered again: with the same event id, so the store
    // keeps one payment.
    wait_for(&again, &taken, "restarted payment service");
    wait_for(&order_lines, "orders-done", "order service");
    for child in [&mut order, &mut payment, &mut fulfilment] {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }

    let payments = tidings_log::LogStore::open(root.path().join("payment")).unwrap();
    let recorded = payments
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap();
    payments.close().await.unwrap();
    for order_id in [format!("order-123-{run}"), format!("order-124-{run}")] {
        let taken = recorded
            .iter()
            .filter(|e| {
                e.event_type == "PaymentProcessed"
                    && e.data.to_value()["orderId"] == order_id.as_str()
            })
            .count();
        assert_eq!(taken, 1, "payments recorded for {order_id}");
    }
    let orders = tidings_log::LogStore::open(root.path().join("order")).unwrap();
    let ends: Vec<(String, String)> = orders
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "OrderCompleted" || e.event_type == "OrderCancelled")
        .map(|e| {
            (
                e.event_type.clone(),
                e.data.to_value()["orderId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    orders.close().await.unwrap();
    assert!(
        ends.contains(&("OrderCompleted".to_owned(), format!("order-123-{run}"))),
        "{ends:?}"
    );
    assert!(
        ends.contains(&("OrderCancelled".to_owned(), format!("order-124-{run}"))),
        "{ends:?}"
    );
    assert_eq!(ends.len(), 2, "{ends:?}");
}
