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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use google_cloud_pubsub::client::{Publisher as ClientPublisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, Message, RetryPolicy, Subscription as SubscriptionModel};
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior, ShutdownToken};
use tokio::sync::mpsc;

use super::attr::EVENT_ID;
use super::{AckHandle, BusError, Committed, DeadLetterOut, Delivery, OutboundMessage, Publisher};
use super::{QueueStats, Subscription};
use crate::ack::AckInner;

/// The variable the Google SDKs read for the emulator address (`HOST:PORT`).
pub const EMULATOR_HOST_VAR: &str = "PUBSUB_EMULATOR_HOST";

pub use crate::config::bus::pubsub::PubSubConfig;

impl PubSubConfig {
    /// Checks ranges Pub/Sub enforces, so a bad value fails at start-up with its field name.
    pub fn check(&self) -> Result<(), String> {
        let in_range = |name: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(format!("bus.pubsub.{name} = {value} is outside {low}..={high}"))
            }
        };
        in_range("max_delivery_attempts", self.max_delivery_attempts.into(), 5, 100)?;
        in_range("ack_deadline_secs", self.ack_deadline_secs.into(), 10, 600)?;
        in_range("max_backoff_secs", self.max_backoff_secs.into(), 0, 600)?;
        in_range("min_backoff_secs", self.min_backoff_secs.into(), 0, self.max_backoff_secs.into())?;
        in_range("streams", self.streams as u64, 1, 64)?;
        in_range("max_outstanding_messages", self.max_outstanding_messages as u64, 2, 1_000_000)?;
        in_range("max_outstanding_bytes", self.max_outstanding_bytes as u64, 1 << 20, 1 << 34)?;
        in_range("publish_batch_messages", self.publish_batch_messages.into(), 1, 1000)?;
        in_range("publish_timeout_secs", self.publish_timeout_secs, 1, 3600)?;
        in_range("publish_batch_bytes", self.publish_batch_bytes.into(), 1, 10_000_000)?;
        if !matches!(self.credentials.as_str(), "auto" | "anonymous" | "default") {
            return Err(format!(
                "bus.pubsub.credentials = {:?}: expected auto, anonymous or default",
                self.credentials
            ));
        }
        Ok(())
    }

    /// The project, from the config or the usual variables.
    pub fn project_id(&self) -> Result<String, BusError> {
        self.project
            .clone()
            .or_else(|| std::env::var("PUBSUB_PROJECT_ID").ok())
            .or_else(|| std::env::var("GOOGLE_CLOUD_PROJECT").ok())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                BusError::Config(
                    "Pub/Sub needs a project: set bus.pubsub.project (or $PUBSUB_PROJECT_ID / $GOOGLE_CLOUD_PROJECT)"
                        .into(),
                )
            })
    }

    /// The endpoint: the configured one, else the emulator's from `$PUBSUB_EMULATOR_HOST`.
    pub fn resolved_endpoint(&self) -> Option<String> {
        self.endpoint.clone().or_else(|| {
            std::env::var(EMULATOR_HOST_VAR).ok().filter(|h| !h.is_empty()).map(|host| {
                if host.contains("://") {
                    host
                } else {
                    format!("http://{host}")
                }
            })
        })
    }

    fn anonymous(&self) -> bool {
        match self.credentials.as_str() {
            "anonymous" => true,
            "default" => false,
            _ => self.resolved_endpoint().is_some_and(|e| e.starts_with("http://")),
        }
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

/// Installs the TLS crypto provider once: the Google crates are built without their default
/// (aws-lc) provider, which keeps the build small; `ring` serves instead.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn anonymous_credentials() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

/// Applies endpoint and credentials to any of the crate's client builders (they share no trait).
macro_rules! connect {
    ($builder:expr, $config:expr) => {{
        install_crypto_provider();
        let mut builder = $builder;
        if let Some(endpoint) = $config.resolved_endpoint() {
            builder = builder.with_endpoint(endpoint);
        }
        if $config.anonymous() {
            builder = builder.with_credentials(anonymous_credentials());
        }
        builder
    }};
}

fn pubsub_error(what: impl Into<String>, error: impl std::fmt::Display) -> BusError {
    BusError::PubSub { what: what.into(), detail: error.to_string() }
}

async fn build_publisher(config: &PubSubConfig, topic: &str) -> Result<ClientPublisher, BusError> {
    let builder = connect!(ClientPublisher::builder(topic.to_string()), config)
        .set_message_count_threshold(config.publish_batch_messages)
        .set_byte_threshold(config.publish_batch_bytes)
        .set_delay_threshold(Duration::from_millis(config.publish_delay_ms));
    builder.build().await.map_err(|e| pubsub_error(format!("publisher for {topic}"), e))
}

/// Publishes change events to a topic.
pub struct PubSubPublisher {
    /// Replaced by a fresh client when a publish is not confirmed in time (a wedged connection).
    client: std::sync::Mutex<ClientPublisher>,
    ordering: bool,
    config: PubSubConfig,
    topic: String,
}

impl PubSubPublisher {
    /// A publisher on the configured topic.
    pub async fn connect(config: &PubSubConfig) -> Result<PubSubPublisher, BusError> {
        let names = ResourceNames::of(config)?;
        check_exists(config, "topic", &names.topic).await?;
        PubSubPublisher::connect_to(config, &names.topic, config.ordering).await
    }

    /// A publisher on any topic (the worker's dead-letter publisher uses it).
    pub async fn connect_to(config: &PubSubConfig, topic: &str, ordering: bool) -> Result<PubSubPublisher, BusError> {
        let client = build_publisher(config, topic).await?;
        Ok(PubSubPublisher {
            client: std::sync::Mutex::new(client),
            ordering,
            config: config.clone(),
            topic: topic.to_string(),
        })
    }

    fn client(&self) -> ClientPublisher {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builds a new client on a new connection, for after a publish that was never confirmed.
    async fn reconnect(&self) {
        match build_publisher(&self.config, &self.topic).await {
            Ok(client) => *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client,
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "reconnecting the publisher failed; keeping the old one")
            }
        }
    }
}

#[async_trait]
impl Publisher for PubSubPublisher {
    async fn publish(&self, messages: Vec<OutboundMessage>) -> Result<(), BusError> {
        // Enqueue everything first (the client batches), then wait for every result.
        let client = self.client();
        let mut pending = Vec::with_capacity(messages.len());
        let tracing_ids = tracing::enabled!(tracing::Level::TRACE);
        let mut event_ids = Vec::new();
        for message in messages {
            if tracing_ids {
                event_ids.push(message.attributes.get(EVENT_ID).cloned().unwrap_or_default());
            }
            let key = if self.ordering { message.ordering_key.clone() } else { None };
            let mut outgoing = Message::new().set_data(message.data).set_attributes(message.attributes);
            if let Some(key) = &key {
                outgoing = outgoing.set_ordering_key(key.clone());
            }
            pending.push((key, client.publish(outgoing)));
        }
        let confirm = async {
            let mut first_error = None;
            for (n, (key, future)) in pending.into_iter().enumerate() {
                let result = future.await;
                if let (Some(event_id), Ok(message_id)) = (event_ids.get(n), &result) {
                    tracing::trace!(%message_id, %event_id, "published");
                }
                if let Err(e) = result {
                    // A failed ordered publish pauses its key; resume it so the retry (the source
                    // re-reads from its checkpoint) can publish again, in order.
                    if let Some(key) = key {
                        client.resume_publish(key);
                    }
                    first_error.get_or_insert(e);
                }
            }
            first_error
        };
        // Without a deadline a publish on a wedged connection waits forever and the source with it
        // (seen after hundreds of killed clients on the emulator). On timeout the source retries from
        // its checkpoint on a new connection; whatever the old one still delivers lands once.
        let timeout = Duration::from_secs(self.config.publish_timeout_secs);
        match tokio::time::timeout(timeout, confirm).await {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(pubsub_error("publish", e)),
            Err(_) => {
                tracing::warn!(topic = %self.topic, timeout_secs = timeout.as_secs(), "publish not confirmed in time; reconnecting");
                self.reconnect().await;
                Err(pubsub_error(
                    "publish",
                    format!("not confirmed within publish_timeout_secs = {}", timeout.as_secs()),
                ))
            }
        }
    }
}

/// How long a pull waits for more messages after the first one.
const PULL_LINGER: Duration = Duration::from_millis(10);

/// One delivered message held by the worker.
type Held = (Message, Handler);

/// A subscription read by streaming pull on one or more streams.
pub struct PubSubSubscription {
    name: String,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Held>>,
    /// The shutdown token of each stream's current incarnation (a stream is reopened after errors).
    shutdowns: Arc<Mutex<Vec<ShutdownToken>>>,
    streams: Vec<tokio::task::JoinHandle<()>>,
    /// Delivered to the worker and not yet acked or nacked.
    outstanding: Arc<AtomicI64>,
    last_delivery: Arc<Mutex<Instant>>,
    drain_quiet: Duration,
    window: (usize, usize),
    dead_letter_publisher: Option<PubSubPublisher>,
}

impl PubSubSubscription {
    /// Opens the configured worker subscription; poison events are published to the dead-letter topic.
    pub async fn open(config: &PubSubConfig) -> Result<PubSubSubscription, BusError> {
        let names = ResourceNames::of(config)?;
        check_exists(config, "subscription", &names.subscription).await?;
        check_exists(config, "topic", &names.dead_letter_topic).await?;
        let dead_letters = PubSubPublisher::connect_to(config, &names.dead_letter_topic, false).await?;
        PubSubSubscription::open_named(config, &names.subscription, Some(dead_letters)).await
    }

    /// Opens the dead-letter subscription.
    pub async fn open_dead_letters(config: &PubSubConfig) -> Result<PubSubSubscription, BusError> {
        let names = ResourceNames::of(config)?;
        check_exists(config, "subscription", &names.dead_letter_subscription).await?;
        PubSubSubscription::open_named(config, &names.dead_letter_subscription, None).await
    }

    /// Opens any subscription by full name.
    pub async fn open_named(
        config: &PubSubConfig,
        name: &str,
        dead_letter_publisher: Option<PubSubPublisher>,
    ) -> Result<PubSubSubscription, BusError> {
        let client = connect!(Subscriber::builder(), config)
            .build()
            .await
            .map_err(|e| pubsub_error(format!("subscriber for {name}"), e))?;
        let (sender, receiver) = mpsc::channel(config.max_outstanding_messages.max(1));
        let last_delivery = Arc::new(Mutex::new(Instant::now()));
        let shutdowns = Arc::new(Mutex::new(Vec::new()));
        let mut streams = Vec::new();
        for slot in 0..config.streams {
            let stream = open_stream(&client, config, name);
            shutdowns.lock().expect("token lock").push(stream.shutdown_token());
            let forward = Forward {
                client: client.clone(),
                config: config.clone(),
                name: name.to_string(),
                sender: sender.clone(),
                last_delivery: last_delivery.clone(),
                shutdowns: shutdowns.clone(),
                slot,
            };
            streams.push(tokio::spawn(forward.run(stream)));
        }
        Ok(PubSubSubscription {
            name: name.to_string(),
            receiver: tokio::sync::Mutex::new(receiver),
            shutdowns,
            streams,
            outstanding: Arc::new(AtomicI64::new(0)),
            last_delivery,
            drain_quiet: Duration::from_millis(config.drain_quiet_ms),
            window: config.flow_window(),
            dead_letter_publisher,
        })
    }

    fn to_delivery(&self, (message, handler): Held) -> Delivery {
        let first_attempt_micros = message
            .publish_time
            .as_ref()
            .map(|t| t.seconds() * 1_000_000 + i64::from(t.nanos()) / 1000)
            .unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
        tracing::trace!(message_id = %message.message_id, event_id = message.attributes.get(EVENT_ID).map(String::as_str), "delivered");
        let message_id = message.message_id;
        Delivery {
            message_id: message_id.clone(),
            data: message.data.to_vec(),
            attributes: message.attributes.into_iter().collect::<BTreeMap<_, _>>(),
            // Set only when the subscription has a dead-letter policy.
            delivery_attempt: handler.delivery_attempt().map_or(1, |a| a.max(1) as u32),
            first_attempt_micros,
            handle: AckHandle { inner: AckInner::PubSub { handler, message_id } },
        }
    }

    /// The client's handlers of deliveries about to be acked or nacked (`action`, for the trace).
    fn handlers(&self, handles: Vec<AckHandle>, action: &str) -> Result<Vec<Handler>, BusError> {
        let count = handles.len() as i64;
        let handlers = handles
            .into_iter()
            .map(|h| match h.inner {
                AckInner::PubSub { handler, message_id } => {
                    tracing::trace!(%message_id, action, "settled");
                    Ok(handler)
                }
                AckInner::Embedded { .. } => Err(BusError::ForeignHandle),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.outstanding.fetch_sub(count, Ordering::Relaxed);
        Ok(handlers)
    }
}

fn open_stream(client: &Subscriber, config: &PubSubConfig, name: &str) -> MessageStream {
    client
        .subscribe(name.to_string())
        .set_max_outstanding_messages(config.max_outstanding_messages as i64)
        .set_max_outstanding_bytes(config.max_outstanding_bytes as i64)
        .set_max_lease_extension(Duration::from_secs(config.ack_deadline_secs.into()))
        .set_max_lease(Duration::from_secs(config.max_lease_secs))
        .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
        .build()
}

/// Moves messages from one streaming-pull stream into the subscription's channel, reopening the
/// stream after an error (the service restarts, the network drops) with a growing pause.
struct Forward {
    client: Subscriber,
    config: PubSubConfig,
    name: String,
    sender: mpsc::Sender<Held>,
    last_delivery: Arc<Mutex<Instant>>,
    shutdowns: Arc<Mutex<Vec<ShutdownToken>>>,
    slot: usize,
}

impl Forward {
    async fn run(self, mut stream: MessageStream) {
        let mut pause = Duration::from_millis(250);
        loop {
            match stream.next().await {
                Some(Ok(held)) => {
                    pause = Duration::from_millis(250);
                    *self.last_delivery.lock().expect("clock lock") = Instant::now();
                    if self.sender.send(held).await.is_err() {
                        return; // The subscription is closing; the handler drops and nacks.
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(subscription = %self.name, error = %e, retry_in_ms = pause.as_millis() as u64, "streaming pull failed; reopening");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                    stream = open_stream(&self.client, &self.config, &self.name);
                    self.shutdowns.lock().expect("token lock")[self.slot] = stream.shutdown_token();
                }
                None => return, // Shut down.
            }
        }
    }
}

#[async_trait]
impl Subscription for PubSubSubscription {
    async fn pull(&self, max_messages: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut receiver = self.receiver.lock().await;
        let mut deliveries = Vec::new();
        let first = if wait.is_zero() {
            receiver.try_recv().ok()
        } else {
            tokio::time::timeout(wait, receiver.recv()).await.ok().flatten()
        };
        let Some(first) = first else {
            return Ok(deliveries);
        };
        deliveries.push(self.to_delivery(first));
        // Messages arrive one response (up to a few hundred) at a time; lingering a moment after the
        // first collects a response or two per pull instead of waking once per message, which is
        // most of the client's CPU otherwise.
        let linger = tokio::time::Instant::now() + PULL_LINGER.min(wait);
        while deliveries.len() < max_messages {
            let held = match receiver.try_recv() {
                Ok(held) => held,
                Err(_) => match tokio::time::timeout_at(linger, receiver.recv()).await {
                    Ok(Some(held)) => held,
                    _ => break,
                },
            };
            deliveries.push(self.to_delivery(held));
        }
        self.outstanding.fetch_add(deliveries.len() as i64, Ordering::Relaxed);
        Ok(deliveries)
    }

    async fn ack(&self, committed: Committed<Vec<AckHandle>>) -> Result<(), BusError> {
        let mut confirmations = Vec::new();
        for handler in self.handlers(committed.into_receipts(), "ack")? {
            match handler {
                // Exactly-once subscriptions confirm the ack; a failed confirmation means a
                // redelivery, which lands as a no-op.
                Handler::ExactlyOnce(h) => confirmations.push(h.confirmed_ack()),
                other => other.ack(),
            }
        }
        let failed = futures::future::join_all(confirmations).await.into_iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            return Err(pubsub_error(format!("ack on {}", self.name), format!("{failed} acks not confirmed")));
        }
        Ok(())
    }

    async fn nack(&self, handles: Vec<AckHandle>) -> Result<(), BusError> {
        for handler in self.handlers(handles, "nack")? {
            handler.nack();
        }
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, BusError> {
        let buffered = self.receiver.lock().await.len() as u64;
        Ok(QueueStats {
            pending: buffered,
            leased: self.outstanding.load(Ordering::Relaxed).max(0) as u64,
            dead_lettered: 0,
            oldest_publish_micros: None,
        })
    }

    async fn is_drained(&self) -> Result<bool, BusError> {
        let stats = self.stats().await?;
        let quiet = self.last_delivery.lock().expect("clock lock").elapsed() >= self.drain_quiet;
        Ok(stats.pending == 0 && stats.leased == 0 && quiet)
    }

    fn flow_window(&self) -> Option<(usize, usize)> {
        Some(self.window)
    }

    fn dead_letters_on_bus(&self) -> bool {
        self.dead_letter_publisher.is_some()
    }

    async fn dead_letter(&self, items: Vec<DeadLetterOut>) -> Result<(), BusError> {
        let Some(publisher) = &self.dead_letter_publisher else {
            return Err(BusError::Config(format!("{} has no dead-letter topic", self.name)));
        };
        let (messages, handles): (Vec<_>, Vec<_>) = items
            .into_iter()
            .map(|item| {
                (OutboundMessage { data: item.data, attributes: item.attributes, ordering_key: None }, item.handle)
            })
            .unzip();
        match publisher.publish(messages).await {
            // Published: the dead-letter topic holds them durably now, which is the commit that
            // lets the originals go.
            Ok(()) => self.ack(Committed::new(handles)).await,
            Err(e) => {
                self.nack(handles).await?;
                Err(e)
            }
        }
    }

    async fn close(&self) {
        // Stop reading, nack what is buffered, then let every stream send its pending acks
        // (NackImmediately: the client nacks whatever else it still leases).
        for stream in &self.streams {
            stream.abort();
        }
        {
            let mut receiver = self.receiver.lock().await;
            receiver.close();
            while let Ok((_, handler)) = receiver.try_recv() {
                handler.nack();
            }
        }
        let tokens = self.shutdowns.lock().expect("token lock").clone();
        let shutdowns = futures::future::join_all(tokens.iter().map(|t| t.shutdown()));
        if tokio::time::timeout(Duration::from_secs(10), shutdowns).await.is_err() {
            tracing::warn!(subscription = %self.name, "pending acks not confirmed within 10 s; those messages will be redelivered and land as no-ops");
        }
    }
}

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

fn is_code(error: &google_cloud_pubsub::Error, code: google_cloud_gax::error::rpc::Code) -> bool {
    error.status().is_some_and(|s| s.code == code) || error.http_status_code() == Some(code_to_http(code))
}

fn code_to_http(code: google_cloud_gax::error::rpc::Code) -> u16 {
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

async fn check_exists(config: &PubSubConfig, kind: &str, name: &str) -> Result<(), BusError> {
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

async fn ensure_topic(admin: &TopicAdmin, name: &str) -> Result<SetupLine, BusError> {
    use google_cloud_gax::error::rpc::Code;
    let outcome = match admin.create_topic().set_name(name.to_string()).send().await {
        Ok(_) => "created",
        Err(e) if is_code(&e, Code::AlreadyExists) => "exists",
        Err(e) => return Err(pubsub_error(format!("creating topic {name}"), e)),
    };
    Ok(SetupLine { kind: "topic", name: name.to_string(), outcome, differences: Vec::new() })
}

async fn ensure_subscription(admin: &SubscriptionAdmin, wanted: SubscriptionModel) -> Result<SetupLine, BusError> {
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
