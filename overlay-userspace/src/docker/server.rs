//! The plugin's HTTP side: dockerd POSTs `/<Interface>.<Method>` with a JSON
//! body (none for Activate and GetCapabilities), no Content-Type and an empty
//! Host header, so bodies are read as bytes and parsed here rather than by a
//! JSON extractor that would insist on a Content-Type. Every answer is HTTP
//! 200; a refusal is `{"Err": …}` from the network driver and `{"Error": …}`
//! from the IPAM driver. An unknown method gets 404, which Docker tolerates
//! only for Program/RevokeExternalConnectivity: every method is served.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use log::{debug, info};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::{net::UnixListener, task::JoinHandle};

use super::{
    Plugin,
    protocol::{ADDRESS_SPACE, IMPLEMENTS},
};

/// Binds the socket (replacing a stale one: the agent's lock is held) and
/// serves it until aborted.
pub fn serve(socket: &Path, plugin: Arc<Plugin>) -> Result<JoinHandle<()>> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding the Docker plugin socket {}", socket.display()))?;
    // Only root (dockerd) may call the drivers.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    info!("Docker drivers overlay-ebpf served on {}", socket.display());
    let app = Router::new()
        .route("/{method}", post(dispatch))
        .with_state(plugin);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("the Docker plugin server stopped: {e}");
        }
    }))
}

/// Which envelope a method's errors go in.
#[derive(Clone, Copy)]
enum Driver {
    Network,
    Ipam,
}

async fn dispatch(
    State(plugin): State<Arc<Plugin>>,
    UrlPath(method): UrlPath<String>,
    body: Bytes,
) -> Response {
    debug!("docker: {method} {}", String::from_utf8_lossy(&body));
    let p = &plugin;
    let (driver, answer) = match method.as_str() {
        "Plugin.Activate" => return ok(json!({ "Implements": IMPLEMENTS })),
        "NetworkDriver.GetCapabilities" => {
            // `global` would need swarm, and swarm refuses legacy plugins.
            return ok(json!({ "Scope": "local", "ConnectivityScope": "global" }));
        }
        "NetworkDriver.CreateNetwork" => net(call(&body, |r| p.create_network(r)).await),
        "NetworkDriver.DeleteNetwork" => net(call(&body, |r| p.delete_network(r)).await),
        "NetworkDriver.CreateEndpoint" => net(call(&body, |r| p.create_endpoint(r)).await),
        "NetworkDriver.DeleteEndpoint" => net(call(&body, |r| p.delete_endpoint(r)).await),
        "NetworkDriver.EndpointOperInfo" => return ok(json!({ "Value": {} })),
        "NetworkDriver.Join" => net(call(&body, |r| p.join(r)).await),
        "NetworkDriver.Leave" => net(call(&body, |r| p.leave(r)).await),
        "NetworkDriver.ProgramExternalConnectivity" => {
            net(call(&body, |r| p.program_external_connectivity(r)).await)
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            net(call(&body, |r| p.revoke_external_connectivity(r)).await)
        }
        // Node discovery, for drivers that gossip themselves: this one has
        // the agent's.
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => return ok(json!({})),
        "NetworkDriver.AllocateNetwork" | "NetworkDriver.FreeNetwork" => (
            Driver::Network,
            Err(anyhow::anyhow!(
                "overlay-ebpf is a local-scope driver: swarm does not allocate its networks"
            )),
        ),
        "IpamDriver.GetCapabilities" => {
            return ok(json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false }));
        }
        "IpamDriver.GetDefaultAddressSpaces" => {
            return ok(json!({
                "LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE,
            }));
        }
        "IpamDriver.RequestPool" => ipam(call(&body, |r| p.request_pool(r)).await),
        "IpamDriver.ReleasePool" => ipam(call(&body, |r| p.release_pool(r)).await),
        "IpamDriver.RequestAddress" => ipam(call(&body, |r| p.request_address(r)).await),
        "IpamDriver.ReleaseAddress" => ipam(call(&body, |r| p.release_address(r)).await),
        _ => {
            debug!("docker: {method} is not served");
            return StatusCode::NOT_FOUND.into_response();
        }
    };
    match answer {
        Ok(value) => ok(value),
        Err(e) => {
            let message = format!("{e:#}");
            info!("docker: {method} refused: {message}");
            let key = match driver {
                Driver::Network => "Err",
                Driver::Ipam => "Error",
            };
            ok(json!({ key: message }))
        }
    }
}

fn ok(value: serde_json::Value) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}

fn net(answer: Result<serde_json::Value>) -> (Driver, Result<serde_json::Value>) {
    (Driver::Network, answer)
}

fn ipam(answer: Result<serde_json::Value>) -> (Driver, Result<serde_json::Value>) {
    (Driver::Ipam, answer)
}

/// Parses the body (an empty one as `{}`), runs the handler, and serializes
/// its answer.
async fn call<R, T, F>(body: &[u8], handler: impl FnOnce(R) -> F) -> Result<serde_json::Value>
where
    R: DeserializeOwned,
    T: Serialize,
    F: Future<Output = Result<T>>,
{
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let request: R = serde_json::from_slice(body).context("the request is not valid JSON")?;
    let answer = handler(request).await?;
    Ok(serde_json::to_value(answer)?)
}
