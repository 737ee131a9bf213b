//! The poolflow collector: an IPFIX Collecting Process (RFC 7011) that stores
//! every data record durably in SQLite.
//!
//! [`start`] binds the configured listeners and starts the pipeline described
//! in [`ingest`]; [`RunningCollector::shutdown`] stops receiving, commits
//! what was received and closes the store.
//!
//! Modules, each using only those above it (no cycles; docs/architecture.md,
//! "Collector session"):
//!
//! ```text
//! record, ledger   pure data and rules (ledger: what the store holds, the replay rule)
//! shipper          pure: what the PostgreSQL shipper does next
//! batch            → record                     what sessions hand to the writer
//! decoder          → batch, record              IPFIX decoding, given the time
//! billing          → batch, ledger              cookies, Cookie Echo, block tags
//! session          → batch, billing, decoder, ledger   one association, sans-IO
//! store            → batch, ledger, record      SQLite
//! prefix           address prefixes (pure)
//! query            → prefix, record, store      reader
//! aggregate        → query, record              top-N and time bins
//! flow_table       → query, record, store       the `flows` SQL virtual table
//! sql              → flow_table, store          `collector sql`
//! pool → billing;  config → pool
//! postgres         → config, query, record, shipper, store   shared tier: schema, shipper thread
//! audit            → ledger, record, store, postgres   reader of SQLite files or PostgreSQL
//! ingest           → batch, decoder, store      the writer thread
//! listeners        → batch, decoder, ingest, session   UDP and TCP drivers
//! sctp             → batch, billing, ingest, listeners, session   SCTP/framed-TCP driver
//! ```

#![warn(missing_docs)]

pub mod aggregate;
pub mod audit;
pub mod batch;
pub mod billing;
pub mod config;
pub mod decode_counts;
pub mod decoder;
pub mod flow_table;
pub mod ingest;
pub mod ledger;
pub mod listeners;
pub mod pool;
pub mod postgres;
pub mod prefix;
pub mod query;
pub mod record;
pub mod sctp;
pub mod segments;
pub mod session;
pub mod shipper;
pub mod sql;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use protocol::ipfix::TransportKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use config::CollectorConfig;
use ingest::{Progress, WriterConfig, session_config, spawn_writer};
use listeners::{TcpSettings, UdpSettings};
use store::Store;

/// A started collector.
pub struct RunningCollector {
    /// Bound UDP addresses (port 0 in the config is resolved here).
    pub udp_addrs: Vec<SocketAddr>,
    /// Bound TCP addresses.
    pub tcp_addrs: Vec<SocketAddr>,
    /// Bound IPFIX-over-TLS addresses.
    pub tls_addrs: Vec<SocketAddr>,
    /// Bound UDP addresses of the SCTP-over-UDP endpoints.
    pub sctp_addrs: Vec<SocketAddr>,
    /// Bound framed-TCP (pool user) addresses.
    pub framed_tcp_addrs: Vec<SocketAddr>,
    /// What the writer has committed.
    pub progress: Arc<Progress>,
    /// The pool registration (and the collector's own ASAP endpoint), when
    /// `[pool]` is configured.
    pub pool_element: Option<pool::Membership>,
    stop_udp: Arc<AtomicBool>,
    /// Stops the TCP and SCTP listeners and their sessions.
    stop_tcp: watch::Sender<bool>,
    udp_threads: Vec<std::thread::JoinHandle<()>>,
    tcp_tasks: JoinSet<()>,
    writer: std::thread::JoinHandle<Result<()>>,
    shipper: Option<postgres::ShipperHandle>,
}

/// Opens the store, binds every listener and starts receiving.
pub async fn start(config: &CollectorConfig) -> Result<RunningCollector> {
    config.validate()?;
    let store = Store::open(&config.database)?;
    let ledger = store.ledger();
    let (tx, rx) = mpsc::channel(config.queue_batches);
    let progress = Arc::new(Progress::default());
    let writer = spawn_writer(
        store,
        rx,
        WriterConfig {
            max_batch_records: config.max_batch_records,
            commit_interval: config.commit_interval,
        },
        Arc::clone(&progress),
    );
    let shipper = config
        .postgres
        .as_ref()
        .map(|pg| postgres::spawn_shipper(pg, &config.database))
        .transpose()?;

    let stop_udp = Arc::new(AtomicBool::new(false));
    let mut udp_addrs = Vec::new();
    let mut udp_threads = Vec::new();
    for addr in &config.udp_listen {
        let sockets = listeners::bind_udp(
            *addr,
            config.udp_receive_buffer_bytes,
            config.udp_receive_buffer_force,
            config.udp_receive_threads,
        )?;
        udp_addrs.push(sockets[0].local_addr()?);
        let settings = UdpSettings {
            session: session_config(
                TransportKind::Udp,
                config.template_lifetime.as_secs(),
                config.max_templates_per_session,
            ),
            // Shared out: each thread tracks the exporters the kernel
            // hashes to its socket.
            max_sessions: config.max_udp_sessions.div_ceil(sockets.len()),
            idle_timeout_secs: config.udp_idle_timeout.as_secs(),
            receive_buffer_bytes: config.udp_receive_buffer_bytes,
        };
        for (index, socket) in sockets.into_iter().enumerate() {
            udp_threads.push(listeners::spawn_udp(
                socket,
                index,
                settings.clone(),
                tx.clone(),
                Arc::clone(&stop_udp),
            ));
        }
    }

    let (stop_tcp, stop_tcp_rx) = watch::channel(false);
    // Plain TCP and TLS sessions: the same IPFIX over a byte stream.
    let tcp_settings = TcpSettings {
        session: session_config(
            TransportKind::Tcp,
            config.template_lifetime.as_secs(),
            config.max_templates_per_session,
        ),
        max_sessions: config.max_tcp_sessions,
    };
    let mut tcp_addrs = Vec::new();
    let mut tcp_tasks = JoinSet::new();
    for addr in &config.tcp_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        tcp_addrs.push(listener.local_addr()?);
        tcp_tasks.spawn(listeners::serve_tcp(
            listener,
            tcp_settings.clone(),
            tx.clone(),
            stop_tcp_rx.clone(),
        ));
    }
    // Built once, before binding: a bad certificate or key (or a key others
    // may read) stops the start with the file named.
    let tls_acceptor = match &config.tls {
        Some(tls) if !config.tls_listen.is_empty() || config.framed_tcp_tls => {
            Some(transport::tls::TlsAcceptor::from(
                transport::tls::server_config(&tls.files()).context("[tls]")?,
            ))
        }
        _ => None,
    };
    let mut tls_addrs = Vec::new();
    for addr in &config.tls_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TLS {addr}"))?;
        tls_addrs.push(listener.local_addr()?);
        tcp_tasks.spawn(listeners::serve_tls(
            listener,
            tcp_settings.clone(),
            tls_acceptor.clone().expect("built when tls_listen is set"),
            tx.clone(),
            stop_tcp_rx.clone(),
        ));
    }
    // Read (or created) once: the registration and the cookies must name
    // the same PE.
    let pe_identifier = config
        .pool
        .as_ref()
        .map(|pool| pool::pe_identifier(pool, &config.database))
        .transpose()?;
    let billing = match (&config.pool, pe_identifier) {
        (Some(pool), Some(pe_identifier)) => {
            pool::cookie_signer(pool, pe_identifier)?.map(|signer| {
                log_cookie_keys(&signer);
                sctp::BillingContext {
                    signer,
                    ledger,
                    committed: progress.committed.subscribe(),
                }
            })
        }
        _ => None,
    };
    let mut sctp_addrs = Vec::new();
    let mut framed_tcp_addrs = Vec::new();
    let association_listeners = config
        .sctp_listen
        .iter()
        .map(|addr| (transport::TransportKind::SctpOverUdp, *addr))
        .chain(
            config
                .framed_tcp_listen
                .iter()
                .map(|addr| (transport::TransportKind::Tcp, *addr)),
        );
    for (kind, addr) in association_listeners {
        let transport_config = transport::Config {
            sctp_port: addr.port(),
            tls: match kind {
                transport::TransportKind::Tcp if config.framed_tcp_tls => {
                    tls_acceptor.clone().map(transport::tls::StreamTls::Server)
                }
                _ => None,
            },
            ..config.association_transport(kind)
        };
        let (label, bound) = match kind {
            transport::TransportKind::Tcp => ("framed-tcp", &mut framed_tcp_addrs),
            _ => ("sctp", &mut sctp_addrs),
        };
        let endpoint = transport::Endpoint::bind(transport_config, addr)
            .await
            .with_context(|| format!("binding {label} listener {addr}"))?;
        bound.push(endpoint.local_addr());
        let settings = sctp::SctpSettings {
            transport: label,
            // Framed TCP carries SCTP's streams, so it keeps SCTP's
            // per-stream sequence numbers (RFC 7011 section 3.1).
            session: session_config(
                TransportKind::Sctp,
                config.template_lifetime.as_secs(),
                config.max_templates_per_session,
            ),
            max_sessions: config.max_sctp_sessions,
            billing: billing.clone(),
        };
        tcp_tasks.spawn(sctp::serve_sctp(
            endpoint,
            settings,
            tx.clone(),
            stop_tcp_rx.clone(),
        ));
    }
    // Register only once every listener is bound: from now on pool users
    // may pick this collector.
    let pool_element = match (&config.pool, pe_identifier) {
        (Some(pool), Some(pe_identifier)) => {
            let advertised = pool::advertised_endpoint(pool, &sctp_addrs, &framed_tcp_addrs)?;
            Some(pool::register(pool, pe_identifier, advertised).await?)
        }
        _ => None,
    };
    tracing::info!(?udp_addrs, ?tcp_addrs, ?tls_addrs, ?sctp_addrs, ?framed_tcp_addrs, database = %config.database.display(), "collector started");
    Ok(RunningCollector {
        udp_addrs,
        tcp_addrs,
        tls_addrs,
        sctp_addrs,
        framed_tcp_addrs,
        progress,
        pool_element,
        stop_udp,
        stop_tcp,
        udp_threads,
        tcp_tasks,
        writer,
        shipper,
    })
}

impl RunningCollector {
    /// Applies a reloaded configuration's `[pool]` policy parameters
    /// (priority, weight, load, load increment) by re-registering at once:
    /// lowering a primary's priority drains its pool users to the backups
    /// without a failover. `running` is the configuration the collector
    /// started with; every other difference needs a restart and makes the
    /// reload fail, naming what differs, with nothing applied.
    pub fn reload_pool(&self, running: &CollectorConfig, new: &CollectorConfig) -> Result<String> {
        let (Some(old_pool), Some(new_pool), Some(membership)) =
            (&running.pool, &new.pool, &self.pool_element)
        else {
            anyhow::ensure!(
                running.pool == new.pool,
                "adding or removing `[pool]` needs a restart"
            );
            return Ok("nothing to change".into());
        };
        new_pool.validate()?;
        let policy_keys = |p: &pool::PoolConfig| {
            let mut p = p.clone();
            (p.priority, p.weight, p.load, p.load_increment) = (0, 0, 0, 0);
            (p.member_key_file, p.member_certificate_file) = (None, None);
            p
        };
        anyhow::ensure!(
            policy_keys(old_pool) == policy_keys(new_pool),
            "only `pool.priority`, `pool.weight`, `pool.load`, `pool.load_increment`, \
             `pool.member_key_file` and `pool.member_certificate_file` change without a restart"
        );
        let policy = new_pool.policy_params()?;
        // Read before applying anything: a bad key or certificate leaves
        // the running registration as it is.
        let credentials = pool::member_credentials(new_pool)?;
        let had_credentials = old_pool.member_key_file.is_some() || credentials.is_some();
        membership.element.update_policy(policy);
        let mut summary = format!("pool policy parameters now {policy:?}");
        if had_credentials {
            // The files may have changed in place (a reissued certificate):
            // re-register with what is there now.
            summary.push_str(match &credentials {
                Some(_) => "; membership certificate reloaded",
                None => "; membership proof removed",
            });
            membership.element.update_membership(credentials);
        }
        Ok(summary)
    }

    /// Graceful stop: deregister from the pool, accept no new data, commit
    /// everything received, close the store.
    pub async fn shutdown(mut self) -> Result<()> {
        // Leave the pool first, so pool users stop choosing us while we
        // drain (RFC 5352 deregistration).
        if let Some(membership) = self.pool_element.take() {
            match membership.element.shutdown().await {
                Ok(status) => tracing::info!(?status, "left the pool"),
                Err(e) => tracing::warn!("deregistration failed: {e:#}"),
            }
        }
        self.stop_udp.store(true, Ordering::Release);
        let _ = self.stop_tcp.send(true);
        while self.tcp_tasks.join_next().await.is_some() {}
        let threads = std::mem::take(&mut self.udp_threads);
        let writer = self.writer;
        let shipper = self.shipper.take();
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            // All senders are gone now: the writer commits and ends.
            let written = writer
                .join()
                .map_err(|_| anyhow::anyhow!("SQLite writer panicked"))?;
            // What it has not shipped yet stays in SQLite: the next start
            // ships it from the watermark.
            if let Some(shipper) = shipper {
                shipper.stop();
            }
            written
        })
        .await?
    }
}

/// One line at start saying how cookies are signed and which echoes pass.
fn log_cookie_keys(signer: &billing::CookieSigner) {
    let trusted_key_ids: Vec<String> = signer
        .trusted
        .public_key_ids()
        .iter()
        .map(|id| format!("{id:#010x}"))
        .collect();
    match &signer.signing_key {
        Some(key) => tracing::info!(
            signing_key_id =
                format_args!("{:#010x}", protocol::signing::key_id(&key.verifying_key())),
            ?trusted_key_ids,
            hmac_echoes = signer.trusted.has_hmac_key(),
            "billing cookies: version 2 (Ed25519)"
        ),
        None => tracing::warn!(
            ?trusted_key_ids,
            "billing cookies: version 1 (shared HMAC key): exporters cannot check them; \
             set `pool.cookie_signing_key_file` (docs/billing-continuity.md)"
        ),
    }
    if signer.trust_any_echo {
        tracing::error!(
            "`pool.trust_any_cookie_echo` is set: EVERY Cookie Echo is accepted unchecked. \
             This is a test setting that plays a hostile pool element; never use it in a pool"
        );
    }
}
