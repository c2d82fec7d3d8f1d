//! The CNI error result: `{"cniVersion","code","msg","details"}` on stdout and
//! a non-zero exit. Codes below 100 are the spec's; 100 and above this
//! plugin's own.

use serde::Serialize;

use crate::api::proto::{ApiError, ErrorCode};

/// 1: the configuration's `cniVersion` is not one the plugin supports.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// 2: a configuration field the plugin does not support (the message names
/// the key and its value).
pub const UNSUPPORTED_FIELD: u32 = 2;
/// 3: the container (its network namespace) does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// 4: a missing or invalid environment variable (the message names it).
pub const INVALID_ENVIRONMENT: u32 = 4;
/// 5: reading stdin or the plugin's own records failed.
pub const IO_FAILURE: u32 = 5;
/// 6: stdin is not JSON of the expected shape.
pub const DECODING_FAILURE: u32 = 6;
/// 7: the configuration is invalid (or names a network the overlay lacks).
pub const INVALID_CONFIG: u32 = 7;
/// 11: no agent answers; the runtime may retry later.
pub const TRY_AGAIN_LATER: u32 = 11;
/// 50 (STATUS): the plugin cannot serve ADD.
pub const NOT_AVAILABLE: u32 = 50;
/// 51 (STATUS): it cannot serve ADD, and existing containers may have limited
/// connectivity.
pub const NOT_AVAILABLE_LIMITED: u32 = 51;
/// 100: the attachment, or an interface of that name, exists already.
pub const ALREADY_EXISTS: u32 = 100;
/// 101 (CHECK): the attachment is missing or not as the ADD left it.
pub const NOT_AS_ADDED: u32 = 101;
/// 102: the agent or the kernel refused.
pub const AGENT_FAILED: u32 = 102;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// An environment variable that is missing or wrong.
    pub fn environment(variable: &str, problem: impl Into<String>) -> CniError {
        CniError::new(
            INVALID_ENVIRONMENT,
            format!("invalid environment variable {variable}"),
            format!("{variable}: {}", problem.into()),
        )
    }

    pub fn config(problem: impl Into<String>) -> CniError {
        CniError::new(INVALID_CONFIG, "invalid network configuration", problem)
    }

    /// An agent's answer (or its absence) as a CNI error: the agent's code
    /// picks the CNI code, its message goes into `details`.
    pub fn from_agent(e: &anyhow::Error) -> CniError {
        let code = e
            .chain()
            .find_map(|c| c.downcast_ref::<ApiError>())
            .map_or(ErrorCode::Failed, |a| a.code);
        let (code, msg) = match code {
            ErrorCode::Unavailable => (TRY_AGAIN_LATER, "the overlay agent is not available"),
            ErrorCode::Invalid => (INVALID_CONFIG, "the overlay agent refused the request"),
            ErrorCode::NotFound => (INVALID_CONFIG, "the overlay agent does not know it"),
            ErrorCode::Exists => (ALREADY_EXISTS, "it exists already"),
            ErrorCode::Failed => (AGENT_FAILED, "the overlay agent failed"),
        };
        CniError::new(code, msg, format!("{e:#}"))
    }

    /// The error result in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Shown<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            error: &'a CniError,
        }
        serde_json::to_string(&Shown {
            cni_version,
            error: self,
        })
        .expect("an error result serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::api_error;

    #[test]
    fn agent_errors_take_the_spec_codes() {
        let down = api_error(
            ErrorCode::Unavailable,
            "no agent answers on /run/overlay/n1.sock",
        );
        let e = CniError::from_agent(&down);
        assert_eq!(e.code, TRY_AGAIN_LATER);
        assert!(e.details.contains("/run/overlay/n1.sock"));
        let wrapped = api_error(ErrorCode::Exists, "eth0 exists").context("attaching");
        assert_eq!(CniError::from_agent(&wrapped).code, ALREADY_EXISTS);
        assert_eq!(
            CniError::from_agent(&anyhow::anyhow!("odd")).code,
            AGENT_FAILED
        );
        assert_eq!(
            CniError::config("bad").to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"invalid network configuration","details":"bad"}"#
        );
    }
}
