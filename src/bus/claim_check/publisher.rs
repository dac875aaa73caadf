//! The publishing half of the claim check (the `gcp` feature): large messages go to GCS first (see
//! the invariants in [`super`]).

use std::sync::Arc;

use async_trait::async_trait;

use super::CLAIM_CHECK;
use crate::bus::{attr, BusError, OutboundMessage, Publisher};
use crate::gcs::Gcs;

/// A publisher that moves large messages to GCS.
pub struct ClaimCheckPublisher {
    inner: Arc<dyn Publisher>,
    gcs: Gcs,
    threshold: usize,
}

impl ClaimCheckPublisher {
    pub fn new(inner: Arc<dyn Publisher>, gcs: Gcs, threshold: usize) -> ClaimCheckPublisher {
        ClaimCheckPublisher { inner, gcs, threshold }
    }

    async fn check_in(&self, message: &mut OutboundMessage) -> Result<(), BusError> {
        let table = message.attributes.get(attr::TABLE).map_or("unknown", String::as_str);
        let hash = crate::envelope::derive_event_id(&[&message.data]);
        let name = self.gcs.object_name(&format!("claims/{table}/{hash}.json"));
        let data = std::mem::take(&mut message.data);
        let size = data.len();
        self.gcs.put(&name, data, "application/json").await.map_err(|e| BusError::Config(e.to_string()))?;
        tracing::debug!(uri = %self.gcs.uri(&name), size, "claim check");
        message.attributes.insert(CLAIM_CHECK.into(), self.gcs.uri(&name));
        Ok(())
    }
}

#[async_trait]
impl Publisher for ClaimCheckPublisher {
    async fn publish(&self, mut messages: Vec<OutboundMessage>) -> Result<(), BusError> {
        for message in messages.iter_mut() {
            // Poison is published as it is: it is dead-lettered from its attributes, not its bytes.
            if message.data.len() > self.threshold && !message.attributes.contains_key(attr::POISON_REASON) {
                self.check_in(message).await?;
            }
        }
        self.inner.publish(messages).await
    }
}
