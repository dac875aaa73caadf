//! `[admin]`: the admin HTTP server and the SIGTERM drain.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[admin]`: the admin HTTP server and shutdown.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on, e.g. `0.0.0.0:9090` in a pod. `off` disables the server. Default
    /// `127.0.0.1:9090` (loopback only).
    #[serde(default = "default_listen")]
    pub listen: Listen,
    /// Environment variable holding the bearer token of the mutating endpoints. Default
    /// `BQSYNC_ADMIN_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// File holding the token (a mounted secret), used when the variable is unset.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// After SIGTERM: stop pulling and reading, commit and ack what is in flight, and exit within
    /// this many seconds; what could not commit stays unacked and is redelivered. Keep it below the
    /// pod's `terminationGracePeriodSeconds`. Default 25.
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
}

/// Where the admin server listens: `off`, or an address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum Listen {
    /// No admin server.
    Off,
    /// `host:port` (port 0: any free port).
    Address(String),
}

impl From<String> for Listen {
    fn from(text: String) -> Listen {
        if text.trim().eq_ignore_ascii_case("off") {
            Listen::Off
        } else {
            Listen::Address(text)
        }
    }
}

impl From<Listen> for String {
    fn from(listen: Listen) -> String {
        match listen {
            Listen::Off => "off".into(),
            Listen::Address(address) => address,
        }
    }
}

fn default_listen() -> Listen {
    Listen::Address("127.0.0.1:9090".into())
}

fn default_token_env() -> String {
    "BQSYNC_ADMIN_TOKEN".into()
}

const fn default_drain_timeout_secs() -> u64 {
    25
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_listen(),
            token_env: default_token_env(),
            token_file: None,
            drain_timeout_secs: default_drain_timeout_secs(),
        }
    }
}
