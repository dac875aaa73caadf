//! Streaming pull on one or more streams, flow-controlled, with leases the client extends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior, ShutdownToken};
use tokio::sync::mpsc;

use crate::ack::AckInner;
use crate::bus::attr::EVENT_ID;
use crate::bus::{AckHandle, BusError, Committed, DeadLetterOut, Delivery, OutboundMessage, Publisher};
use crate::bus::{QueueStats, Subscription};

use super::admin::check_exists;
use super::publisher::PubSubPublisher;
use super::{pubsub_error, PubSubConfig, ResourceNames};

/// How long a pull waits for more messages after the first one.
pub(super) const PULL_LINGER: Duration = Duration::from_millis(10);

/// One delivered message held by the worker.
pub(super) type Held = (Message, Handler);

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
            staged: None,
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
                // The other buses' handles exist only with the `embedded` feature.
                #[allow(unreachable_patterns)]
                _ => Err(BusError::ForeignHandle),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.outstanding.fetch_sub(count, Ordering::Relaxed);
        Ok(handlers)
    }
}

pub(super) fn open_stream(client: &Subscriber, config: &PubSubConfig, name: &str) -> MessageStream {
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
        // Between reopens: 250 ms growing to 10 s (see crate::retry), reset by a delivery.
        let mut pacer = crate::retry::Policy::exponential(Duration::from_millis(250), Duration::from_secs(10)).pacer();
        loop {
            match stream.next().await {
                Some(Ok(held)) => {
                    pacer.reset();
                    *self.last_delivery.lock().expect("clock lock") = Instant::now();
                    if self.sender.send(held).await.is_err() {
                        return; // The subscription is closing; the handler drops and nacks.
                    }
                }
                Some(Err(e)) => {
                    let pause = pacer.next_pause();
                    tracing::warn!(subscription = %self.name, error = %e, retry_in_ms = pause.as_millis() as u64, "streaming pull failed; reopening");
                    tokio::time::sleep(pause).await;
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
