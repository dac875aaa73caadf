//! The claim check: events larger than `[gcs] claim_check_bytes` travel through GCS, not the bus.
//!
//! [`ClaimCheckPublisher`] wraps any publisher: it writes each large message's bytes to
//! `gs://BUCKET/PREFIX/claims/TABLE/HASH.json` and publishes an empty message whose attribute
//! `bqsync_claim_check` holds the URI. The worker's [`resolve`] fetches the bytes back before
//! classifying, so everything after it (validation, dead letters with the original bytes, replay)
//! sees the full event.
//!
//! Invariants:
//! - The object is written before the message is published, and the publisher returns only after
//!   both, so a source's checkpoint never passes an event whose bytes are not stored.
//! - Object names derive from the bytes, so a re-published event rewrites the same object.
//! - A claim whose object is missing is dead-lettered (`decode`, with the URI); a GCS outage is
//!   transient: the delivery is nacked and comes back.

use std::sync::Arc;

use async_trait::async_trait;

use super::{attr, BusError, Delivery, OutboundMessage, Publisher};
use crate::dead_letter::DeadLetterReason;
use crate::gcs::Gcs;

/// Attribute holding the `gs://` URI of a claim-checked event.
pub const CLAIM_CHECK: &str = "bqsync_claim_check";

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

/// What became of a delivery's claim check.
pub enum Resolved {
    /// Ready to classify (no claim, or its bytes were fetched, or it is marked as poison).
    Ready(Delivery),
    /// GCS failed: nack it, it comes back.
    Retry(Delivery),
}

/// Fetches the bytes of a claim-checked delivery; others pass through.
pub async fn resolve(gcs: Option<&Gcs>, mut delivery: Delivery) -> Resolved {
    let Some(uri) = delivery.attributes.get(CLAIM_CHECK).cloned() else {
        return Resolved::Ready(delivery);
    };
    if !delivery.data.is_empty() {
        return Resolved::Ready(delivery);
    }
    let poison = |delivery: &mut Delivery, detail: String| {
        delivery.attributes.insert(attr::POISON_REASON.into(), DeadLetterReason::Decode.as_str().into());
        delivery.attributes.insert(attr::POISON_DETAIL.into(), detail);
    };
    match gcs {
        None => poison(&mut delivery, format!("claim check {uri}, but this worker has no [gcs] bucket configured")),
        Some(gcs) => match gcs.get(&uri).await {
            Ok(bytes) => delivery.data = bytes,
            Err(e) if e.not_found => poison(&mut delivery, format!("claim check object {uri} not found")),
            Err(e) => {
                tracing::warn!(error = %e, "claim check not readable now; the delivery will come back");
                return Resolved::Retry(delivery);
            }
        },
    }
    Resolved::Ready(delivery)
}
