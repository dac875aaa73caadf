//! The Pub/Sub bus: Google Cloud Pub/Sub through the official `google-cloud-pubsub` client.
//!
//! Producers publish to one topic (the table rides in the `bqsync_table` attribute); workers read one
//! subscription by streaming pull on one or more streams. Poison events are published to the
//! dead-letter topic by the worker (with the reason as attributes) and then acked; messages that keep
//! failing are nacked and reach the same topic through the subscription's dead-letter policy. A
//! subscription on the dead-letter topic keeps them, and the worker lands it in `dead_letters`.
//!
//! Invariants:
//! - [`PubSubPublisher::publish`] returns only after the service accepted every message of the call
//!   (each publish future resolved), so a producer's checkpoint never runs ahead of the bus.
//! - A delivery's lease is extended by the client until its handler is acked or nacked, up to
//!   `max_lease_secs`; the worker acks only after its batch committed. Dropping a handler nacks.
//! - Flow control bounds what a worker holds: at most `streams × max_outstanding_messages` messages
//!   (and the matching bytes) are delivered and not yet acked. The worker sizes its batches to fit.
//! - The emulator and production differ only in endpoint and credentials (see [`PubSubConfig`]).

use super::BusError;

pub use admin::{differences, main_subscription, ping, setup, SetupLine};
pub use publisher::PubSubPublisher;
pub use subscription::PubSubSubscription;
/// The variable the Google SDKs read for the emulator address (`HOST:PORT`).
pub const EMULATOR_HOST_VAR: &str = "PUBSUB_EMULATOR_HOST";

pub use crate::config::bus::pubsub::PubSubConfig;

impl PubSubConfig {
    /// The project, from the config or the usual variables.
    pub fn project_id(&self) -> Result<String, BusError> {
        crate::gcp::project(self.project.as_deref(), &["PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"]).ok_or_else(|| {
            BusError::Config(
                "Pub/Sub needs a project: set bus.pubsub.project (or $PUBSUB_PROJECT_ID / $GOOGLE_CLOUD_PROJECT)"
                    .into(),
            )
        })
    }

    /// The endpoint: the configured one, else the emulator's from `$PUBSUB_EMULATOR_HOST`.
    pub fn resolved_endpoint(&self) -> Option<String> {
        crate::gcp::endpoint(self.endpoint.as_deref(), EMULATOR_HOST_VAR)
    }

    fn anonymous(&self) -> bool {
        crate::gcp::is_anonymous(self.credentials, self.resolved_endpoint().as_deref())
    }

    /// The messages and bytes one worker may hold, all streams together.
    pub fn flow_window(&self) -> (usize, usize) {
        (self.streams * self.max_outstanding_messages, self.streams * self.max_outstanding_bytes)
    }
}

/// Full resource names.
#[derive(Debug, Clone)]
pub struct ResourceNames {
    pub topic: String,
    pub subscription: String,
    pub dead_letter_topic: String,
    pub dead_letter_subscription: String,
}

impl ResourceNames {
    pub fn of(config: &PubSubConfig) -> Result<ResourceNames, BusError> {
        let project = config.project_id()?;
        let full = |kind: &str, name: &str| {
            if name.starts_with("projects/") {
                name.to_string()
            } else {
                format!("projects/{project}/{kind}/{name}")
            }
        };
        Ok(ResourceNames {
            topic: full("topics", &config.topic),
            subscription: full("subscriptions", &config.subscription),
            dead_letter_topic: full("topics", &config.dead_letter_topic),
            dead_letter_subscription: full("subscriptions", &config.dead_letter_subscription),
        })
    }
}

pub(super) fn anonymous_credentials() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

/// Applies endpoint and credentials to any of the crate's client builders (they share no trait).
macro_rules! connect {
    ($builder:expr, $config:expr) => {{
        $crate::gcp::install_crypto_provider();
        let mut builder = $builder;
        if let Some(endpoint) = $config.resolved_endpoint() {
            builder = builder.with_endpoint(endpoint);
        }
        if $config.anonymous() {
            builder = builder.with_credentials($crate::bus::pubsub::anonymous_credentials());
        }
        builder
    }};
}

pub(super) fn pubsub_error(what: impl Into<String>, error: impl std::fmt::Display) -> BusError {
    BusError::PubSub { what: what.into(), detail: error.to_string() }
}

mod admin;
mod publisher;
mod subscription;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> PubSubConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn names_are_completed_with_the_project() {
        let c = config("project = \"p\"\ntopic = \"projects/other/topics/t\"");
        let names = ResourceNames::of(&c).unwrap();
        assert_eq!(names.topic, "projects/other/topics/t");
        assert_eq!(names.subscription, "projects/p/subscriptions/bqsync-worker");
        assert_eq!(names.dead_letter_topic, "projects/p/topics/bqsync-dead-letters");
    }

    #[test]
    fn ranges_are_checked_with_field_names() {
        let err = config("max_delivery_attempts = 3").check().unwrap_err();
        assert!(err.contains("bus.pubsub.max_delivery_attempts"), "{err}");
        let err = config("min_backoff_secs = 30\nmax_backoff_secs = 20").check().unwrap_err();
        assert!(err.contains("min_backoff_secs"), "{err}");
        assert!(config("").check().is_ok());
    }

    #[test]
    fn explicit_endpoint_wins_and_http_means_anonymous() {
        let c = config("endpoint = \"http://127.0.0.1:1\"");
        assert_eq!(c.resolved_endpoint().as_deref(), Some("http://127.0.0.1:1"));
        assert!(c.anonymous());
        let c = config("endpoint = \"https://pubsub.googleapis.com\"");
        assert!(!c.anonymous());
        let c = config("endpoint = \"http://127.0.0.1:1\"\ncredentials = \"default\"");
        assert!(!c.anonymous());
    }

    #[test]
    fn the_main_subscription_carries_both_policies_and_differences_are_named() {
        let c = config("project = \"p\"\nmax_delivery_attempts = 7\nmin_backoff_secs = 1\nmax_backoff_secs = 5");
        let names = ResourceNames::of(&c).unwrap();
        let wanted = main_subscription(&c, &names).unwrap();
        let policy = wanted.dead_letter_policy.as_ref().unwrap();
        assert_eq!(policy.max_delivery_attempts, 7);
        assert_eq!(policy.dead_letter_topic, "projects/p/topics/bqsync-dead-letters");
        assert_eq!(wanted.retry_policy.as_ref().unwrap().maximum_backoff.as_ref().unwrap().seconds(), 5);
        assert!(differences(&wanted, &wanted).is_empty());
        let live = wanted.clone().set_ack_deadline_seconds(10);
        assert_eq!(differences(&wanted, &live), vec!["ack_deadline_seconds: config 60, live 10".to_string()]);
    }
}
