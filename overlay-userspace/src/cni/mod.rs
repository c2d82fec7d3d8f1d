//! `overlay-cni`, the CNI plugin (spec 1.1.0; it answers in 0.3.0, 0.3.1,
//! 0.4.0, 1.0.0 and 1.1.0, whichever the configuration says). It is thin: the
//! node's agent plumbs and allocates, the plugin turns the runtime's
//! environment and stdin into one request on the agent's socket and the answer
//! into a CNI result.
//!
//! - [`invocation`]: the environment and stdin, read and checked ([`parse`]
//!   is a plain function of both, for the fuzzer); [`conf`]: the
//!   configuration on stdin;
//! - [`commands`]: ADD, DEL, CHECK, STATUS, GC and VERSION, each a request to
//!   the agent;
//! - [`result`]: the ADD result per version, and what CHECK reads back;
//! - [`records`]: what ADD made, for GC; the detaches DEL queues while the
//!   agent is down are the API's ([`crate::api::offline`]);
//! - [`version`], [`error`]: the versions and the spec's error codes.

pub mod commands;
pub mod conf;
pub mod error;
pub mod invocation;
pub mod records;
pub mod result;
#[cfg(test)]
mod test_env;
pub mod version;

pub use invocation::{Env, Invocation, parse};

use self::{error::CniError, version::Version};

/// What the plugin prints on stdout, and whether it succeeded (exit 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

/// One invocation, start to end: parse, ask the agent, answer. Needs a tokio
/// runtime.
pub async fn run(env: &Env, stdin: &[u8]) -> Outcome {
    let invocation = match parse(env, stdin) {
        Ok(invocation) => invocation,
        Err(e) => return failure(&e, reply_version(stdin)),
    };
    match commands::execute(&invocation).await {
        Ok(Some(result)) => Outcome {
            stdout: result.to_string(),
            success: true,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            success: true,
        },
        Err(e) => failure(&e, invocation.version().as_str()),
    }
}

fn failure(e: &CniError, version: &str) -> Outcome {
    Outcome {
        stdout: e.to_json(version),
        success: false,
    }
}

/// The version an error about unparsable input is written in: the input's,
/// if it names one the plugin speaks, else the newest.
fn reply_version(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            Some(
                Version::parse(v.get("cniVersion")?.as_str()?)
                    .ok()?
                    .as_str(),
            )
        })
        .unwrap_or(Version::NEWEST.as_str())
}
