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
use serde::Serialize;
use serde_json::json;
use tokio::{net::UnixListener, task::JoinHandle};

use super::{
    Plugin,
    protocol::{ADDRESS_SPACE, IMPLEMENTS, Request},
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
    match method.as_str() {
        "Plugin.Activate" => return ok(json!({ "Implements": IMPLEMENTS })),
        "NetworkDriver.GetCapabilities" => {
            // `global` would need swarm, and swarm refuses legacy plugins.
            return ok(json!({ "Scope": "local", "ConnectivityScope": "global" }));
        }
        "NetworkDriver.EndpointOperInfo" => return ok(json!({ "Value": {} })),
        // Node discovery, for drivers that gossip themselves: this one has
        // the agent's.
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => return ok(json!({})),
        "NetworkDriver.AllocateNetwork" | "NetworkDriver.FreeNetwork" => {
            return refused(
                &method,
                Driver::Network,
                &anyhow::anyhow!(
                    "overlay-ebpf is a local-scope driver: swarm does not allocate its networks"
                ),
            );
        }
        "IpamDriver.GetCapabilities" => {
            return ok(json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false }));
        }
        "IpamDriver.GetDefaultAddressSpaces" => {
            return ok(json!({
                "LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE,
            }));
        }
        _ => {}
    }
    let Some(request) = Request::decode(&method, &body) else {
        debug!("docker: {method} is not served");
        return StatusCode::NOT_FOUND.into_response();
    };
    let driver = if method.starts_with("IpamDriver.") {
        Driver::Ipam
    } else {
        Driver::Network
    };
    let answer = match request.context("the request is not valid JSON") {
        Ok(request) => handle(&plugin, request).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(value) => ok(value),
        Err(e) => refused(&method, driver, &e),
    }
}

/// Runs the handler of `request` and serializes its answer.
async fn handle(p: &Arc<Plugin>, request: Request) -> Result<serde_json::Value> {
    match request {
        Request::CreateNetwork(r) => to_json(p.create_network(r).await),
        Request::DeleteNetwork(r) => to_json(p.delete_network(r).await),
        Request::CreateEndpoint(r) => to_json(p.create_endpoint(r).await),
        Request::DeleteEndpoint(r) => to_json(p.delete_endpoint(r).await),
        Request::Join(r) => to_json(p.join(r).await),
        Request::Leave(r) => to_json(p.leave(r).await),
        Request::ProgramExternalConnectivity(r) => {
            to_json(p.program_external_connectivity(r).await)
        }
        Request::RevokeExternalConnectivity(r) => to_json(p.revoke_external_connectivity(r).await),
        Request::RequestPool(r) => to_json(p.request_pool(r).await),
        Request::ReleasePool(r) => to_json(p.release_pool(r).await),
        Request::RequestAddress(r) => to_json(p.request_address(r).await),
        Request::ReleaseAddress(r) => to_json(p.release_address(r).await),
    }
}

fn to_json<T: Serialize>(answer: Result<T>) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(answer?)?)
}

/// A refusal in `driver`'s envelope.
fn refused(method: &str, driver: Driver, e: &anyhow::Error) -> Response {
    let message = format!("{e:#}");
    info!("docker: {method} refused: {message}");
    let key = match driver {
        Driver::Network => "Err",
        Driver::Ipam => "Error",
    };
    ok(json!({ key: message }))
}

fn ok(value: serde_json::Value) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}
