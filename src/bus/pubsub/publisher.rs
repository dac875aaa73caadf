//! Publishing to a topic: batched, each call returning once every message is accepted.

use std::time::Duration;

use async_trait::async_trait;
use google_cloud_pubsub::client::Publisher as ClientPublisher;
use google_cloud_pubsub::model::Message;

use crate::bus::attr::EVENT_ID;
use crate::bus::{BusError, OutboundMessage, Publisher};

use super::admin::check_exists;
use super::{pubsub_error, PubSubConfig, ResourceNames};

pub(super) async fn build_publisher(config: &PubSubConfig, topic: &str) -> Result<ClientPublisher, BusError> {
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
