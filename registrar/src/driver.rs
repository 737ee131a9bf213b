//! The thin tokio driver around the sans-IO [`Server`]: listeners, one task
//! per association, one core task that owns the server (so the handlespace
//! needs no lock), the Server Announce socket and the HTTP status endpoint.
//!
//! Framing note: over TCP the transport crate wraps every ASAP message in its
//! own 12-byte frame header (length, stream, flags, PPID). Wireshark's ASAP
//! dissector on TCP 3863 expects bare ASAP messages, so it will not decode
//! this stream; over SCTP-over-UDP (`tshark -d udp.port==3863,sctp`) the
//! messages are plain SCTP DATA with PPID 11 and decode as ASAP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use protocol::rserpool::{
    ASAP_SCTP_PPID, TransportAddress, TransportKind as AsapTransportKind, TransportUse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use transport::{Association, Endpoint, Event, TransportKind};

use crate::config::RegistrarConfig;
use crate::handlespace::AssocId;
use crate::server::{Action, Server, Status};

/// Messages queued for one association's writer before it counts as stuck.
const OUTBOUND_QUEUE: usize = 1024;
/// Largest HTTP request head the status endpoint reads.
const MAX_HTTP_REQUEST: usize = 8 * 1024;

enum Input {
    Up {
        assoc: AssocId,
        remote: SocketAddr,
        outbound: mpsc::Sender<Vec<u8>>,
    },
    Message {
        assoc: AssocId,
        message: transport::Message,
    },
    Down {
        assoc: AssocId,
    },
    Status(oneshot::Sender<Status>),
}

/// A running registrar.
pub struct Registrar {
    /// Bound TCP listener, if enabled.
    pub tcp_addr: Option<SocketAddr>,
    /// Bound SCTP-over-UDP socket, if enabled.
    pub sctp_over_udp_addr: Option<SocketAddr>,
    /// Bound HTTP status endpoint, if enabled.
    pub status_addr: Option<SocketAddr>,
    /// The server identifier in use.
    pub server_id: u32,
    inputs: mpsc::Sender<Input>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Registrar {
    /// Binds every configured listener and starts serving. `metrics` is the
    /// Prometheus handle whose rendering `/metrics` serves (the binary
    /// installs the recorder; in-process tests pass `None`).
    pub async fn start(
        config: RegistrarConfig,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let server_id = match config.server_id {
            0 => rand::random::<u32>().max(1),
            id => id,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (inputs, inputs_rx) = mpsc::channel::<Input>(4096);
        let next_assoc = Arc::new(AtomicU64::new(1));
        let mut tasks = Vec::new();

        let mut transport_config = if config.transport.fast_failure_detection {
            transport::Config::fast_failure_detection(TransportKind::Tcp)
        } else {
            transport::Config {
                heartbeat_interval: Duration::from_millis(config.transport.heartbeat_interval_ms),
                ..transport::Config::default()
            }
        };
        transport_config.sctp_port = config.listen.sctp_port;

        let mut tcp_addr = None;
        if !config.listen.tcp.is_empty() {
            let local: SocketAddr = config.listen.tcp.parse()?;
            let endpoint = Endpoint::bind(
                transport::Config {
                    transport: TransportKind::Tcp,
                    ..transport_config.clone()
                },
                local,
            )
            .await
            .with_context(|| format!("binding ASAP/TCP on {local}"))?;
            tcp_addr = Some(endpoint.local_addr());
            tasks.push(tokio::spawn(accept_loop(
                endpoint,
                inputs.clone(),
                next_assoc.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut sctp_over_udp_addr = None;
        if !config.listen.sctp_over_udp.is_empty() {
            let local: SocketAddr = config.listen.sctp_over_udp.parse()?;
            let endpoint = Endpoint::bind(
                transport::Config {
                    transport: TransportKind::SctpOverUdp,
                    ..transport_config.clone()
                },
                local,
            )
            .await
            .with_context(|| format!("binding ASAP/SCTP-over-UDP on {local}"))?;
            sctp_over_udp_addr = Some(endpoint.local_addr());
            tasks.push(tokio::spawn(accept_loop(
                endpoint,
                inputs.clone(),
                next_assoc.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut status_addr = None;
        if !config.listen.status.is_empty() {
            let local: SocketAddr = config.listen.status.parse()?;
            let listener = TcpListener::bind(local)
                .await
                .with_context(|| format!("binding the status endpoint on {local}"))?;
            status_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(serve_status(
                listener,
                inputs.clone(),
                metrics,
                shutdown_rx.clone(),
            )));
        }

        let mut server_config = config.server_config(server_id);
        server_config.announce_transports = announce_transports(&config, tcp_addr)?;
        let announcer = if config.announce.enabled {
            Some(Announcer::new(&config).await?)
        } else {
            None
        };
        let server = Server::new(server_config, std::time::Instant::now());
        tasks.push(tokio::spawn(core_loop(
            server,
            inputs_rx,
            announcer,
            shutdown_rx,
        )));
        tracing::info!(
            server_id = format_args!("{server_id:#010x}"),
            ?tcp_addr,
            ?sctp_over_udp_addr,
            ?status_addr,
            "registrar running"
        );
        Ok(Self {
            tcp_addr,
            sctp_over_udp_addr,
            status_addr,
            server_id,
            inputs,
            shutdown,
            tasks,
        })
    }

    /// A snapshot of the handlespace.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Status(reply))
            .await
            .map_err(|_| anyhow::anyhow!("registrar stopped"))?;
        Ok(answer.await?)
    }

    /// Stops listening, closes every association and waits for the tasks.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn accept_loop(
    mut endpoint: Endpoint,
    inputs: mpsc::Sender<Input>,
    next_assoc: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = endpoint.accept() => {
                let Some(association) = accepted else { break };
                let assoc = next_assoc.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(run_association(assoc, association, inputs.clone(), shutdown.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Pumps one association: its messages into the core, the core's messages out.
async fn run_association(
    assoc: AssocId,
    mut association: Association,
    inputs: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (outbound, mut outbound_rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_QUEUE);
    let remote = association.remote_addr();
    tracing::debug!(assoc, %remote, "association up");
    if inputs
        .send(Input::Up {
            assoc,
            remote,
            outbound,
        })
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            event = association.recv() => match event {
                Some(Event::Message(message)) => {
                    // ENRP or other protocols do not belong on the ASAP port.
                    if message.ppid != ASAP_SCTP_PPID && message.ppid != 0 {
                        tracing::debug!(assoc, ppid = message.ppid, "dropping non-ASAP message");
                        continue;
                    }
                    if inputs.send(Input::Message { assoc, message }).await.is_err() {
                        break;
                    }
                }
                Some(Event::Up | Event::Restarted) => {}
                Some(Event::Down(reason)) => {
                    tracing::debug!(assoc, ?reason, "association down");
                    break;
                }
                Some(Event::Failed(reason)) => {
                    tracing::info!(assoc, ?reason, "association failed");
                    break;
                }
                None => break,
            },
            payload = outbound_rx.recv() => {
                // `None`: the core dropped our sender, i.e. asked us to close.
                let Some(payload) = payload else { break };
                let message = transport::Message::new(0, ASAP_SCTP_PPID, payload);
                if association.send(message).await.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    association.close();
    let _ = inputs.send(Input::Down { assoc }).await;
}

async fn core_loop(
    mut server: Server,
    mut inputs: mpsc::Receiver<Input>,
    announcer: Option<Announcer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut outbound: HashMap<AssocId, mpsc::Sender<Vec<u8>>> = HashMap::new();
    loop {
        let deadline = server
            .next_deadline()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let actions = tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { break };
                let now = std::time::Instant::now();
                match input {
                    Input::Up { assoc, remote, outbound: sender } => {
                        outbound.insert(assoc, sender);
                        server.on_association_up(now, assoc, Some(remote));
                        Vec::new()
                    }
                    Input::Message { assoc, message } => {
                        server.on_message(now, assoc, &message.payload)
                    }
                    Input::Down { assoc } => {
                        outbound.remove(&assoc);
                        server.on_association_down(assoc);
                        Vec::new()
                    }
                    Input::Status(reply) => {
                        let _ = reply.send(server.status(now));
                        Vec::new()
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => server.on_timer(std::time::Instant::now()),
            _ = shutdown.changed() => break,
        };
        for action in actions {
            match action {
                Action::Send { assoc, payload } => {
                    let Some(sender) = outbound.get(&assoc) else {
                        continue;
                    };
                    if sender.try_send(payload).is_err() {
                        // A peer that does not read its messages gets cut off
                        // rather than stalling the whole registrar.
                        tracing::warn!(assoc, "outbound queue full: closing association");
                        outbound.remove(&assoc);
                    }
                }
                Action::Close { assoc } => {
                    outbound.remove(&assoc);
                }
                Action::Announce { payload } => {
                    if let Some(announcer) = &announcer {
                        announcer.send(&payload).await;
                    }
                }
            }
        }
    }
}

/// Sends Server Announces over UDP (multicast or unicast).
struct Announcer {
    socket: UdpSocket,
    destinations: Vec<SocketAddr>,
}

impl Announcer {
    async fn new(config: &RegistrarConfig) -> anyhow::Result<Self> {
        let destinations = config
            .announce
            .addresses
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("announce address {a:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ipv6 = destinations.first().is_some_and(SocketAddr::is_ipv6);
        let socket = UdpSocket::bind(if ipv6 { "[::]:0" } else { "0.0.0.0:0" }).await?;
        if !ipv6 {
            socket.set_multicast_ttl_v4(config.announce.multicast_ttl)?;
        }
        Ok(Self {
            socket,
            destinations,
        })
    }

    async fn send(&self, payload: &[u8]) {
        for destination in &self.destinations {
            if let Err(error) = self.socket.send_to(payload, destination).await {
                tracing::debug!(%destination, %error, "server announce not sent");
            }
        }
    }
}

/// Transports advertised in Server Announces: the configured ones, else the
/// TCP listener if it has a specific address (a wildcard address tells a
/// pool user nothing; the announce's source address then does).
fn announce_transports(
    config: &RegistrarConfig,
    tcp_addr: Option<SocketAddr>,
) -> anyhow::Result<Vec<TransportAddress>> {
    if config.announce.transports.is_empty() {
        return Ok(tcp_addr
            .filter(|addr| !addr.ip().is_unspecified())
            .map(|addr| TransportAddress {
                kind: AsapTransportKind::Tcp(TransportUse::DataPlusControl),
                port: addr.port(),
                addresses: vec![addr.ip()],
            })
            .into_iter()
            .collect());
    }
    config
        .announce
        .transports
        .iter()
        .map(|text| parse_transport(text))
        .collect()
}

/// Parses "tcp:ADDRESS:PORT" or "sctp:ADDRESS:PORT".
fn parse_transport(text: &str) -> anyhow::Result<TransportAddress> {
    let (protocol, address) = text
        .split_once(':')
        .with_context(|| format!("announce transport {text:?} is not PROTOCOL:ADDRESS:PORT"))?;
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("announce transport {text:?}: bad address"))?;
    let kind = match protocol {
        "tcp" => AsapTransportKind::Tcp(TransportUse::DataPlusControl),
        "sctp" => AsapTransportKind::Sctp(TransportUse::DataPlusControl),
        other => anyhow::bail!("announce transport protocol {other:?} is not tcp or sctp"),
    };
    Ok(TransportAddress {
        kind,
        port: address.port(),
        addresses: vec![address.ip()],
    })
}

async fn serve_status(
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
                    let served = tokio::time::timeout(
                        Duration::from_secs(10),
                        serve_http(stream, inputs, metrics),
                    );
                    if let Ok(Err(error)) = served.await {
                        tracing::debug!(%error, "status request failed");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// A minimal HTTP/1.0 responder: `GET /status` (JSON), `GET /metrics`
/// (Prometheus text), anything else 404. One request per connection.
async fn serve_http(
    mut stream: TcpStream,
    inputs: mpsc::Sender<Input>,
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n")
    {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..n]);
        anyhow::ensure!(request.len() <= MAX_HTTP_REQUEST, "request head too large");
    }
    let head = String::from_utf8_lossy(&request);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/" | "/status") => {
            let (reply, answer) = oneshot::channel();
            inputs
                .send(Input::Status(reply))
                .await
                .map_err(|_| anyhow::anyhow!("registrar stopped"))?;
            let body = serde_json::to_vec_pretty(&answer.await?)?;
            ("200 OK", "application/json", body)
        }
        ("GET", "/metrics") => match &metrics {
            Some(handle) => (
                "200 OK",
                "text/plain; version=0.0.4",
                handle.render().into_bytes(),
            ),
            None => (
                "404 Not Found",
                "text/plain",
                b"metrics not enabled\n".to_vec(),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            b"try /status or /metrics\n".to_vec(),
        ),
    };
    let header = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Fetches `/status` from a running registrar (what `registrar dump` does).
pub async fn fetch_status(address: SocketAddr) -> anyhow::Result<Status> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .context("connecting to the status endpoint timed out")?
        .with_context(|| format!("connecting to {address}"))?;
    stream
        .write_all(b"GET /status HTTP/1.0\r\nHost: registrar\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .context("reading the status timed out")??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "status endpoint answered: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(serde_json::from_slice(&response[split + 4..])?)
}

/// The IP a wildcard listener is reachable on from this host, for tests and
/// examples (`0.0.0.0` → `127.0.0.1`).
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}
