//! The CNI spec versions the plugin speaks, and what each one allows.
//!
//! The result format changed once: up to 0.4.0 every IP carries a `version`
//! ("4"), from 1.0.0 it does not; 1.1.0 adds an interface's `mtu`, and the
//! STATUS and GC commands. CHECK exists from 0.4.0.

use std::fmt;

use super::error::{CniError, INCOMPATIBLE_VERSION};

/// A version the plugin answers in, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Version {
    pub const NEWEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// A configuration's `cniVersion`: one of [`SUPPORTED`], exactly.
    pub fn parse(text: &str) -> Result<Version, CniError> {
        SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| {
                CniError::new(
                    INCOMPATIBLE_VERSION,
                    "incompatible CNI version",
                    format!(
                        "cniVersion {text:?} is not one this plugin supports ({})",
                        supported_list().join(", ")
                    ),
                )
            })
    }

    /// Results list each IP's family as `"version": "4"`.
    pub fn ip_has_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// Interfaces carry their `mtu`.
    pub fn interface_has_mtu(self) -> bool {
        self >= Version::V1_1_0
    }

    /// The oldest version that has `command`, for those that came later.
    pub fn introducing(command: &str) -> Option<Version> {
        match command {
            "CHECK" => Some(Version::V0_4_0),
            "STATUS" | "GC" => Some(Version::V1_1_0),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn supported_list() -> Vec<&'static str> {
    SUPPORTED.iter().map(|v| v.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_exactly_and_order_by_age() {
        assert_eq!(Version::parse("1.0.0").unwrap(), Version::V1_0_0);
        assert!(Version::V0_4_0 < Version::V1_0_0);
        for bad in ["1.0", "0.2.0", "2.0.0", ""] {
            let e = Version::parse(bad).unwrap_err();
            assert_eq!(e.code, INCOMPATIBLE_VERSION, "{bad}");
            assert!(e.details.contains("1.1.0"), "{e:?}");
        }
        assert!(Version::V0_4_0.ip_has_version() && !Version::V1_0_0.ip_has_version());
        assert!(!Version::V1_0_0.interface_has_mtu() && Version::V1_1_0.interface_has_mtu());
        assert_eq!(Version::introducing("GC"), Some(Version::V1_1_0));
        assert_eq!(Version::introducing("ADD"), None);
    }
}
