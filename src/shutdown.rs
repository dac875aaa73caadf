//! Stopping: one [`Shutdown`] handed to every task, built on `tokio_util`'s `CancellationToken`
//! (in the manner of mini-redis's `shutdown.rs`).
//!
//! Two signals, each set once and never cleared:
//! - **stop**: SIGINT/SIGTERM. Sources stop reading at their next publish boundary (their
//!   checkpoints cover exactly what was published); the worker stops pulling, flushes and acks what
//!   it holds.
//! - **drained**: every source of a one-shot run reached the end of its input. The worker stops once
//!   the bus is empty and everything landed or was dead-lettered.
//!
//! Library code never exits the process: a drain that outruns its deadline is an error returned to
//! `main`, which picks the exit code.

use tokio_util::sync::CancellationToken;

/// The stop and drained signals, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    drained: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Stop now (see the module doc).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Input is exhausted: stop once everything is landed.
    pub fn input_drained(&self) {
        self.drained.cancel();
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub fn is_drained(&self) -> bool {
        self.drained.is_cancelled()
    }

    /// Resolves once [`Shutdown::input_drained`] was called.
    pub async fn drained(&self) {
        self.drained.cancelled().await;
    }

    /// Resolves once [`Shutdown::stop`] was called.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }
}
