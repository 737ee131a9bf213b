//! The HTTP status endpoint (`/status` as JSON, `/metrics` for
//! Prometheus) served with hyper, and the client `registrar dump` uses.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::server::Status;

use super::Input;

/// Largest HTTP request head the status endpoint reads.
const MAX_HTTP_REQUEST: usize = 8 * 1024;

pub(super) async fn serve_status(
    listener: TcpListener,
    inputs: mpsc::Sender<Input>,
    metrics: Option<PrometheusHandle>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inputs = inputs.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        status_response(request, inputs.clone(), metrics.clone())
                    });
                    // hyper parses the request (its head is bounded by
                    // MAX_HTTP_REQUEST); a slow or idle client is cut off.
                    let connection = hyper::server::conn::http1::Builder::new()
                        .max_buf_size(MAX_HTTP_REQUEST)
                        .keep_alive(false)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    match tokio::time::timeout(Duration::from_secs(10), connection).await {
                        Ok(Err(error)) => tracing::debug!(%error, "status request failed"),
                        Err(_) => tracing::debug!("status request timed out"),
                        Ok(Ok(())) => {}
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// `GET /status` (JSON), `GET /metrics` (Prometheus text), anything else 404.
pub(super) async fn status_response(
    request: hyper::Request<hyper::body::Incoming>,
    inputs: mpsc::Sender<Input>,
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<hyper::Response<http_body_util::Full<bytes::Bytes>>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/" | "/status") => {
            let body = serde_json::to_vec_pretty(&core_status(&inputs).await?)?;
            (hyper::StatusCode::OK, "application/json", body)
        }
        (&hyper::Method::GET, "/metrics") => match &metrics {
            Some(handle) => {
                // The cores' counters, as of this scrape.
                super::metrics::publish(&core_status(&inputs).await?);
                (
                    hyper::StatusCode::OK,
                    "text/plain; version=0.0.4",
                    handle.render().into_bytes(),
                )
            }
            None => (
                hyper::StatusCode::NOT_FOUND,
                "text/plain",
                b"metrics not enabled\n".to_vec(),
            ),
        },
        _ => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            b"try /status or /metrics\n".to_vec(),
        ),
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?)
}

/// A status snapshot from the core task.
async fn core_status(inputs: &mpsc::Sender<Input>) -> anyhow::Result<Status> {
    let (reply, answer) = oneshot::channel();
    inputs
        .send(Input::Status(reply))
        .await
        .map_err(|_| anyhow::anyhow!("registrar stopped"))?;
    Ok(answer.await?)
}

/// Fetches `/status` from a running registrar (what `registrar dump` does).
pub async fn fetch_status(address: SocketAddr) -> anyhow::Result<Status> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .context("connecting to the status endpoint timed out")?
        .with_context(|| format!("connecting to {address}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/status")
        .header(hyper::header::HOST, address.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body()).await?;
        anyhow::Ok((status, body.to_bytes()))
    })
    .await
    .context("reading the status timed out")??;
    connection.abort();
    anyhow::ensure!(
        status == hyper::StatusCode::OK,
        "status endpoint answered: {status}"
    );
    Ok(serde_json::from_slice(&body)?)
}
