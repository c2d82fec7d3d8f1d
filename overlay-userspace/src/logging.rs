//! The agent's log: env_logger, filtered by `RUST_LOG`, on stderr, as text or
//! (`--log-format json`) one JSON object per line for a log pipeline. Lines
//! about cluster events carry their fields as key-values (`event`, `node`,
//! `network`, ...): after the message in text, as members in JSON.

use std::io::Write as _;

use clap::ValueEnum;
use log::kv::{Error, Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message key=value …`
    #[default]
    Text,
    /// `{"time":…,"level":…,"target":…,"message":…,"key":value,…}`
    Json,
}

/// What is logged unless `RUST_LOG` says otherwise.
const DEFAULT_FILTER: &str = "info,netlink_packet_route=error,chitchat=warn";

pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_FILTER));
    builder.format_timestamp_millis();
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = json_line(&buf.timestamp_millis().to_string(), record);
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// One record as a JSON object.
fn json_line(time: &str, record: &log::Record<'_>) -> String {
    let mut fields = Map::new();
    fields.insert("time".into(), time.into());
    fields.insert("level".into(), record.level().as_str().into());
    fields.insert("target".into(), record.target().into());
    // The programs' records pad some arguments with spaces.
    fields.insert(
        "message".into(),
        record.args().to_string().trim_end().into(),
    );
    let mut kv = Fields(&mut fields);
    let _ = record.key_values().visit(&mut kv);
    Json::Object(fields).to_string()
}

struct Fields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), Error> {
        let json = if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(n) = value.to_i64() {
            Json::from(n)
        } else if let Some(b) = value.to_bool() {
            Json::from(b)
        } else {
            Json::from(value.to_string())
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_object_with_its_fields() {
        let kvs: &[(&str, Value<'_>)] = &[
            ("event", Value::from("node_died")),
            ("node", Value::from("n2")),
            ("generation", Value::from(7u64)),
        ];
        let line = json_line(
            "2026-01-01T00:00:00.000Z",
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("overlay")
                .args(format_args!("node n2 died \"quoted\""))
                .key_values(&kvs)
                .build(),
        );
        let v: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "node n2 died \"quoted\"");
        assert_eq!(v["event"], "node_died");
        assert_eq!(v["generation"], 7);
        assert!(!line.contains('\n'));
    }
}
