//! A real Prometheus server (Debian's `prometheus`, which `cargo xtask test`
//! installs) inside a test namespace, bound to its loopback, scraping agents
//! there every second; and PromQL queries through its HTTP API. Stopped, and
//! its data removed, on drop.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{
    cluster::wait_until,
    cmd::TempDir,
    netns::{in_netns, join, netns_path},
    scale::scaled,
};

/// One sample of an instant query's result: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    child: Child,
    ns: String,
    listen: SocketAddr,
    /// Holds the configuration and the TSDB.
    _dir: TempDir,
}

/// An HTTP GET from inside namespace `ns`: the status and body.
pub fn http_get(ns: &str, url: &str) -> Result<(u16, String)> {
    http(ns, "GET", url, &[])
}

/// An HTTP GET or POST (with no body) with `query` parameters, from inside
/// namespace `ns`: the status and body.
pub fn http(ns: &str, method: &str, url: &str, query: &[(&str, &str)]) -> Result<(u16, String)> {
    let (method, url) = (method.to_owned(), url.to_owned());
    let query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    join(in_netns(ns, move || {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(scaled(Duration::from_secs(5))))
                .build(),
        );
        let mut response = match method.as_str() {
            "GET" => agent.get(&url).query_pairs(query).call(),
            "POST" => agent.post(&url).query_pairs(query).send_empty(),
            other => bail!("no {other} here"),
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string()?;
        Ok((status, body))
    }))
}

impl Prometheus {
    /// Starts Prometheus in `ns` on `listen`, scraping each of `targets`'
    /// `/metrics` every second, and waits until it is ready.
    pub fn start(ns: &str, listen: SocketAddr, targets: &[SocketAddr]) -> Result<Prometheus> {
        let dir = TempDir::new(&format!("prom-{ns}"))?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: overlay\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .arg("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus (cargo xtask test installs Debian's package)")?;
        let prometheus = Prometheus {
            child,
            ns: ns.to_owned(),
            listen,
            _dir: dir,
        };
        wait_until(scaled(Duration::from_secs(30)), "prometheus ready", || {
            Ok(http_get(ns, &format!("http://{listen}/-/ready")).is_ok_and(|(s, _)| s == 200))
        })?;
        Ok(prometheus)
    }

    /// The result of the instant query `promql`.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let url = format!("http://{}/api/v1/query", self.listen);
        let (status, body) = http(&self.ns, "GET", &url, &[("query", promql)])?;
        let v: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        ensure!(
            status == 200 && v["status"] == "success",
            "{promql}: {status} {body}"
        );
        let result = &v["data"]["result"];
        let samples = match v["data"]["resultType"].as_str() {
            Some("vector") => result.as_array().context("a vector")?.clone(),
            Some("scalar") => vec![serde_json::json!({ "metric": {}, "value": result })],
            other => bail!("{promql}: unexpected result type {other:?}"),
        };
        samples
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .context("a sample value")?
                    .parse()
                    .context("a number")?;
                Ok(Sample { labels, value })
            })
            .collect()
    }

    /// The one value of `promql`, or `None` while it has no result.
    pub fn value(&self, promql: &str) -> Result<Option<f64>> {
        let samples = self.query(promql)?;
        ensure!(samples.len() <= 1, "{promql}: {samples:?}");
        Ok(samples.first().map(|s| s.value))
    }

    /// Waits until `promql` has one value and `check` holds for it; the value.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        check: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let mut last = None;
        wait_until(scaled(timeout), promql, || {
            last = self.value(promql)?;
            Ok(last.is_some_and(&check))
        })
        .with_context(|| format!("the last value was {last:?}"))?;
        Ok(last.expect("checked"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
