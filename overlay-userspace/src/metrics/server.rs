//! The HTTP side: `GET /metrics` in the OpenMetrics text format, which
//! Prometheus scrapes. Encoding reads the maps, so it runs off the agent's
//! event loop.

use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{net::TcpListener, sync::watch};

use super::{AgentMetrics, PREFIX, collect::Collect};
use crate::{dataplane::maps::Maps, monitor::Listeners};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `listen` and serves the metrics of the agent whose maps are pinned
/// in `pin_dir`, until the task is aborted.
pub async fn serve(
    listen: SocketAddr,
    pin_dir: &Path,
    agent: Arc<AgentMetrics>,
    listeners: watch::Receiver<Listeners>,
) -> Result<tokio::task::JoinHandle<()>> {
    let maps = Maps::from_pins(pin_dir)?;
    let mut registry = Registry::with_prefix(PREFIX);
    agent.register(&mut registry);
    registry.register_collector(Box::new(Collect {
        agent,
        maps: std::sync::Mutex::new(maps),
        listeners,
    }));
    let registry = Arc::new(registry);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics_listen: binding {listen}/tcp"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, registry.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

async fn answer(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: &str| {
        let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
        *r.status_mut() = status;
        r
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let encoded = tokio::task::spawn_blocking(move || {
                let mut text = String::new();
                encode(&mut text, &registry).map(|()| text)
            })
            .await;
            match encoded {
                Ok(Ok(text)) => {
                    let mut r = Response::new(Full::new(Bytes::from(text)));
                    r.headers_mut()
                        .insert(CONTENT_TYPE, OPENMETRICS.parse().expect("a valid header"));
                    r
                }
                _ => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding the metrics failed\n",
                ),
            }
        }
        (_, "/metrics") => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
            r.headers_mut()
                .insert(ALLOW, "GET".parse().expect("a valid header"));
            r
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "overlay agent: Prometheus metrics at /metrics\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found; the metrics are at /metrics\n",
        ),
    })
}
