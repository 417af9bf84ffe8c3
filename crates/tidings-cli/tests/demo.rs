//! `tidings demo` runs the order flow and prints it as a table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::HashMap;
use std::process::Command;

struct Row {
    position: String,
    stream: String,
    event_type: String,
    correlation: String,
    causation: String,
}

fn demo_output() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("demo")
        .output()
        .expect("the tidings binary runs");
    assert!(
        out.status.success(),
        "tidings demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn rows(output: &str) -> Vec<Row> {
    output
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cells.len(), 6, "row {l:?}");
            Row {
                position: cells[0].to_owned(),
                stream: cells[1].to_owned(),
                event_type: cells[3].to_owned(),
                correlation: cells[4].to_owned(),
                causation: cells[5].to_owned(),
            }
        })
        .collect()
}

#[test]
fn demo_prints_the_order_flow_with_causation() {
    let output = demo_output();
    let header: Vec<&str> = output
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "POSITION",
            "STREAM",
            "REVISION",
            "TYPE",
            "CORRELATION",
            "CAUSATION"
        ]
    );
    let rows = rows(&output);
    let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    for expected in [
        "ServiceStarted",
        "UserRegistered",
        "OrderCreated",
        "ItemAddedToOrder",
        "OrderConfirmed",
        "PaymentProcessed",
        "OrderPaymentConfirmed",
        "OrderPaymentFailed",
        "ErrorOccurred",
    ] {
        assert!(
            types.contains(&expected),
            "{expected} missing from\n{output}"
        );
    }

    let by_type = |t: &str| -> Vec<&Row> { rows.iter().filter(|r| r.event_type == t).collect() };
    let at: HashMap<&str, &Row> = rows.iter().map(|r| (r.position.as_str(), r)).collect();
    let cause_of = |r: &Row| -> &Row {
        at.get(r.causation.trim_start_matches('#'))
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "causation {} of {} is not in the table\n{output}",
                    r.causation, r.event_type
                )
            })
    };

    let paid = by_type("OrderPaymentConfirmed");
    assert_eq!(paid.len(), 1);
    let processed = cause_of(paid[0]);
    assert_eq!(processed.event_type, "PaymentProcessed");
    let confirmed = cause_of(processed);
    assert_eq!(confirmed.event_type, "OrderConfirmed");
    assert_eq!(confirmed.stream, "order-123");
    // One business transaction: the order's first event correlates the whole chain.
    let created = by_type("OrderCreated")
        .into_iter()
        .find(|r| r.stream == "order-123")
        .expect("order-123 was created");
    for r in [confirmed, processed, paid[0]] {
        assert_eq!(
            r.correlation, created.correlation,
            "{}\n{output}",
            r.event_type
        );
    }
    assert_eq!(created.correlation, format!("#{}", created.position));

    let failed = by_type("OrderPaymentFailed");
    assert_eq!(failed.len(), 1);
    assert_eq!(cause_of(cause_of(failed[0])).stream, "order-124");
    assert!(output.contains("events. #N is the event at position N"));
}
