//! The progress bars of `tidings export` (events), `tidings import` (bytes) and
//! `tidings projection rebuild` (log positions).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `total` events, labelled `what`.
pub fn events(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(style(
        "{msg} [{bar:40.cyan/blue}] {pos}/{len} events ({per_sec}, eta {eta})",
    ));
    bar.set_message(what.to_owned());
    bar
}

/// A bar counting log positions up to `end`, labelled `what`.
pub fn positions(end: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(end);
    bar.set_style(style(
        "{msg} [{bar:40.cyan/blue}] {pos}/{len} positions ({per_sec}, eta {eta})",
    ));
    bar.set_message(what.to_owned());
    bar
}

/// A bar counting the `size` bytes of an import file.
pub fn import_bytes(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    bar.set_style(style(
        "importing [{bar:40.cyan/blue}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
    ));
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
