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

#[cfg(feature = "gcp")]
mod publisher;

use super::{attr, Delivery};
use crate::dead_letter::DeadLetterReason;
#[cfg(feature = "gcp")]
pub use publisher::ClaimCheckPublisher;

/// Where claim-checked bytes are read from: the `[gcs]` bucket. Without the `gcp` feature there is
/// none (the type has no values), and a claim check is dead-lettered with the reason.
#[cfg(feature = "gcp")]
pub type ClaimStore = crate::gcs::Gcs;
#[cfg(not(feature = "gcp"))]
#[derive(Debug, Clone)]
pub enum ClaimStore {}

/// Attribute holding the `gs://` URI of a claim-checked event.
pub const CLAIM_CHECK: &str = "bqsync_claim_check";

/// What became of a delivery's claim check.
pub enum Resolved {
    /// Ready to classify (no claim, or its bytes were fetched, or it is marked as poison).
    Ready(Delivery),
    /// GCS failed: nack it, it comes back.
    Retry(Delivery),
}

/// Fetches the bytes of a claim-checked delivery; others pass through.
pub async fn resolve(gcs: Option<&ClaimStore>, mut delivery: Delivery) -> Resolved {
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
        None if !cfg!(feature = "gcp") => {
            poison(&mut delivery, format!("claim check {uri}: {}", crate::features::missing("reading it", "gcp")))
        }
        None => poison(&mut delivery, format!("claim check {uri}, but this worker has no [gcs] bucket configured")),
        #[cfg(not(feature = "gcp"))]
        Some(never) => match *never {},
        #[cfg(feature = "gcp")]
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
