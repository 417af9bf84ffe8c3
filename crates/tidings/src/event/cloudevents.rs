//! CloudEvents 1.0 mapping.
