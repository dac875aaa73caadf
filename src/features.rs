//! What this binary was built with (its Cargo features), and the error that names the feature a
//! backend or command needs when it is missing.
//!
//! - `embedded` (default): DuckDB, the SQLite-file bus and the commands that open them.
//! - `gcp` (default): Pub/Sub, BigQuery, GCS and Secret Manager.
//!
//! The configuration keeps every section in every build (config is a leaf), so a file written for
//! one build reads in the other; choosing a backend the binary lacks fails at start with
//! [`missing`]'s message, never later.

/// The features compiled into this binary (`embedded, gcp`, …; set by build.rs), as `bqsync
/// --version` prints them.
pub const BUILT_WITH: &str = env!("BQSYNC_FEATURES");

/// Says that `what` needs `feature`, and how to get a binary with it.
pub fn missing(what: &str, feature: &str) -> String {
    format!(
        "{what} needs bqsync built with the `{feature}` feature (the default build has it: `cargo build --release`); \
         this binary was built with: {}",
        BUILT_WITH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_feature_and_this_build() {
        let message = missing("the DuckDB warehouse", "embedded");
        assert!(message.contains("`embedded` feature"), "{message}");
        assert!(message.contains(BUILT_WITH), "{message}");
    }
}
