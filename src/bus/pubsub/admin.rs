//! `bqsync setup` and readiness: topics and subscriptions created idempotently, live settings
//! compared with the config.

use std::time::Duration;

use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, RetryPolicy, Subscription as SubscriptionModel};

use crate::bus::BusError;

use super::{pubsub_error, PubSubConfig, ResourceNames};

/// What `bqsync setup` did with one resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SetupLine {
    pub kind: &'static str,
    pub name: String,
    /// `created` or `exists`.
    pub outcome: &'static str,
    /// Settings of an existing resource that differ from the config (not changed by setup).
    pub differences: Vec<String>,
}

/// Creates topics and subscriptions from the config; existing ones are left as they are and their
/// differences from the config reported.
pub async fn setup(config: &PubSubConfig) -> Result<Vec<SetupLine>, BusError> {
    let names = ResourceNames::of(config)?;
    let topics = connect!(TopicAdmin::builder(), config).build().await.map_err(|e| pubsub_error("topic admin", e))?;
    let subscriptions = connect!(SubscriptionAdmin::builder(), config)
        .build()
        .await
        .map_err(|e| pubsub_error("subscription admin", e))?;
    let mut lines = Vec::new();
    for topic in [&names.topic, &names.dead_letter_topic] {
        lines.push(ensure_topic(&topics, topic).await?);
    }
    let main = main_subscription(config, &names)?;
    lines.push(ensure_subscription(&subscriptions, main).await?);
    let dead = SubscriptionModel::new()
        .set_name(names.dead_letter_subscription.clone())
        .set_topic(names.dead_letter_topic.clone())
        .set_ack_deadline_seconds(config.ack_deadline_secs as i32);
    lines.push(ensure_subscription(&subscriptions, dead).await?);
    Ok(lines)
}

/// The worker subscription as the config describes it.
pub fn main_subscription(config: &PubSubConfig, names: &ResourceNames) -> Result<SubscriptionModel, BusError> {
    let seconds = |s: u32| {
        google_cloud_wkt::Duration::try_from(Duration::from_secs(s.into()))
            .map_err(|e| BusError::Config(format!("backoff of {s} s: {e}")))
    };
    Ok(SubscriptionModel::new()
        .set_name(names.subscription.clone())
        .set_topic(names.topic.clone())
        .set_ack_deadline_seconds(config.ack_deadline_secs as i32)
        .set_enable_message_ordering(config.ordering)
        .set_enable_exactly_once_delivery(config.exactly_once_delivery)
        .set_dead_letter_policy(
            DeadLetterPolicy::new()
                .set_dead_letter_topic(names.dead_letter_topic.clone())
                .set_max_delivery_attempts(config.max_delivery_attempts as i32),
        )
        .set_retry_policy(
            RetryPolicy::new()
                .set_minimum_backoff(seconds(config.min_backoff_secs)?)
                .set_maximum_backoff(seconds(config.max_backoff_secs)?),
        ))
}

pub(super) fn is_code(error: &google_cloud_pubsub::Error, code: google_cloud_gax::error::rpc::Code) -> bool {
    error.status().is_some_and(|s| s.code == code) || error.http_status_code() == Some(code_to_http(code))
}

pub(super) fn code_to_http(code: google_cloud_gax::error::rpc::Code) -> u16 {
    use google_cloud_gax::error::rpc::Code;
    match code {
        Code::AlreadyExists => 409,
        Code::NotFound => 404,
        _ => 0,
    }
}

/// Fails with a clear message when a topic or subscription does not exist: without this, publishing
/// and streaming pull would only retry and log. Any other answer (no permission to read the resource
/// is normal for a least-privilege service account) lets start-up go on.
/// Readiness: the subscription (or, for a producer, the topic) answers. Any error counts, within 5 s.
pub async fn ping(config: &PubSubConfig, worker: bool) -> Result<(), String> {
    let names = ResourceNames::of(config).map_err(|e| e.to_string())?;
    let call = async {
        if worker {
            let admin = connect!(SubscriptionAdmin::builder(), config).build().await.map_err(|e| e.to_string())?;
            admin.get_subscription().set_subscription(names.subscription.clone()).send().await.map(|_| ())
        } else {
            let admin = connect!(TopicAdmin::builder(), config).build().await.map_err(|e| e.to_string())?;
            admin.get_topic().set_topic(names.topic.clone()).send().await.map(|_| ())
        }
        .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(result) => result,
        Err(_) => Err("Pub/Sub did not answer within 5 s".into()),
    }
}

pub(super) async fn check_exists(config: &PubSubConfig, kind: &str, name: &str) -> Result<(), BusError> {
    use google_cloud_gax::error::rpc::Code;
    let result = if kind == "topic" {
        let admin =
            connect!(TopicAdmin::builder(), config).build().await.map_err(|e| pubsub_error("topic admin", e))?;
        admin.get_topic().set_topic(name.to_string()).send().await.map(|_| ())
    } else {
        let admin = connect!(SubscriptionAdmin::builder(), config)
            .build()
            .await
            .map_err(|e| pubsub_error("subscription admin", e))?;
        admin.get_subscription().set_subscription(name.to_string()).send().await.map(|_| ())
    };
    match result {
        Err(e) if is_code(&e, Code::NotFound) => Err(BusError::Config(format!(
            "Pub/Sub {kind} {name} does not exist: run `bqsync setup` (or create it with Terraform)"
        ))),
        Err(e) => {
            tracing::debug!(kind, name, error = %e, "could not check that the Pub/Sub resource exists; going on");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

pub(super) async fn ensure_topic(admin: &TopicAdmin, name: &str) -> Result<SetupLine, BusError> {
    use google_cloud_gax::error::rpc::Code;
    let outcome = match admin.create_topic().set_name(name.to_string()).send().await {
        Ok(_) => "created",
        Err(e) if is_code(&e, Code::AlreadyExists) => "exists",
        Err(e) => return Err(pubsub_error(format!("creating topic {name}"), e)),
    };
    Ok(SetupLine { kind: "topic", name: name.to_string(), outcome, differences: Vec::new() })
}

pub(super) async fn ensure_subscription(
    admin: &SubscriptionAdmin,
    wanted: SubscriptionModel,
) -> Result<SetupLine, BusError> {
    use google_cloud_gax::error::rpc::Code;
    let name = wanted.name.clone();
    match admin.create_subscription().with_request(wanted.clone()).send().await {
        Ok(_) => Ok(SetupLine { kind: "subscription", name, outcome: "created", differences: Vec::new() }),
        Err(e) if is_code(&e, Code::AlreadyExists) => {
            let live = admin
                .get_subscription()
                .set_subscription(name.clone())
                .send()
                .await
                .map_err(|e| pubsub_error(format!("reading subscription {name}"), e))?;
            Ok(SetupLine { kind: "subscription", name, outcome: "exists", differences: differences(&wanted, &live) })
        }
        Err(e) => Err(pubsub_error(format!("creating subscription {name}"), e)),
    }
}

/// Settings where a live subscription differs from the wanted one.
pub fn differences(wanted: &SubscriptionModel, live: &SubscriptionModel) -> Vec<String> {
    let mut out = Vec::new();
    let mut compare = |what: &str, want: String, have: String| {
        if want != have {
            out.push(format!("{what}: config {want}, live {have}"));
        }
    };
    compare("topic", wanted.topic.clone(), live.topic.clone());
    compare("ack_deadline_seconds", wanted.ack_deadline_seconds.to_string(), live.ack_deadline_seconds.to_string());
    compare(
        "enable_message_ordering",
        wanted.enable_message_ordering.to_string(),
        live.enable_message_ordering.to_string(),
    );
    compare(
        "enable_exactly_once_delivery",
        wanted.enable_exactly_once_delivery.to_string(),
        live.enable_exactly_once_delivery.to_string(),
    );
    let policy = |s: &SubscriptionModel| {
        s.dead_letter_policy
            .as_ref()
            .map_or("none".to_string(), |p| format!("{} after {}", p.dead_letter_topic, p.max_delivery_attempts))
    };
    compare("dead_letter_policy", policy(wanted), policy(live));
    let retry = |s: &SubscriptionModel| {
        s.retry_policy.as_ref().map_or("none".to_string(), |r| {
            let secs = |d: &Option<google_cloud_wkt::Duration>| d.as_ref().map_or(0, |d| d.seconds());
            format!("{}s..{}s", secs(&r.minimum_backoff), secs(&r.maximum_backoff))
        })
    };
    compare("retry_policy", retry(wanted), retry(live));
    out
}
