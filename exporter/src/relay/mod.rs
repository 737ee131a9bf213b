//! `exporter relay`: ordinary routers send IPFIX (RFC 7011) or NetFlow v9
//! (RFC 3954) over UDP or TCP to the relay, and the relay forwards every
//! data record into the collector pool through the pool user core
//! ([`crate::stream`]), so record sequences, the replay buffer, cookies,
//! failover and failback apply to routers' records exactly as to
//! `exporter stream`'s. This is how an operator points routers at a pool
//! handle: routers know one static address, the relay knows the pool.
//!
//! Layout:
//! - `session`: one router transport session, sans-IO ([`RouterSession`]):
//!   IPFIX or NetFlow v9 decoding, per-session limits, what each message did
//!   ([`InputReport`]);
//! - `rewrite`: a router's record in forwarded form (its relay template,
//!   the fields the relay appends, billing or best effort);
//! - `templates`: the relay's template table ([`TemplateRegistry`]), one
//!   relay id per forwarded layout, persisted so ids survive restarts;
//! - `listen`: the UDP and TCP listeners, the only IO, and their metrics;
//! - this file: the command, which binds the listeners and runs the pool
//!   user core over what they hand on.
//!
//! Back-pressure: listeners hand records to the pool user through a
//! bounded queue. It fills when the replay buffer is full (no collector
//! takes records fast enough). UDP routers cannot be paused: a UDP record
//! that finds the queue full is dropped and counted
//! (`poolflow_relay_dropped_records_total{reason="backpressure"}`) and
//! logged. A TCP connection waits instead, stops reading, and its router
//! is paused by TCP flow control.
//!
//! Stopping (SIGTERM): the listeners stop reading at once and the pool user
//! drains what it took. What a router sent over TCP that the relay had not
//! read yet is lost, as with any IPFIX collector that stops (IPFIX over TCP
//! has no application acknowledgement); UDP routers keep sending into the
//! void. Run a relay under a supervisor that restarts it.
//!
//! Metrics: `poolflow_relay_received_messages_total{protocol,transport}`,
//! `poolflow_relay_received_records_total{protocol}`,
//! `poolflow_relay_forwarded_records_total`,
//! `poolflow_relay_dropped_records_total{reason}`,
//! `poolflow_relay_decode_errors_total{protocol,reason}`,
//! `poolflow_relay_input_lost_records_total` (IPFIX sequence gaps between
//! routers and relay), `poolflow_relay_input_lost_packets_total` (NetFlow
//! v9 gaps count packets), `poolflow_relay_sessions{transport}`,
//! `poolflow_relay_templates`, plus the pool user's `poolflow_exporter_*`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::StreamConfig;
use crate::record_queue::record_queue;
use crate::stream::{StreamReport, StreamSettings};

#[cfg(test)]
mod fixtures;
mod listen;
mod rewrite;
mod session;
mod templates;

use listen::{ListenerContext, bind_udp, serve_tcp, udp_loop};
pub use rewrite::forwarded_layout;
pub use session::{InputError, InputProtocol, InputReport, RouterSession, SessionLimits};
pub use templates::{FIRST_RELAY_TEMPLATE_ID, RegistryError, SharedRegistry, TemplateRegistry};

/// What `exporter relay` needs beyond the configuration.
pub struct RelayOptions {
    /// After the listeners stopped: longest wait for the last cookies.
    pub exit_drain_timeout: Duration,
}

/// Runs the relay until SIGTERM or SIGINT: the listeners stop, the pool
/// user drains (up to `exit_drain_timeout`) and saves its state. A second
/// signal stops at once (state saved, unacknowledged records kept in the
/// spill for the next run).
pub async fn run(config: StreamConfig, options: RelayOptions) -> anyhow::Result<StreamReport> {
    config.relay.check()?;
    let relay = config.relay.clone();
    let template_file = config.relay_template_file();
    let registry =
        SharedRegistry::new(TemplateRegistry::open(&template_file, relay.max_templates)?);
    let known = registry.lock().templates().to_vec();
    tracing::info!(
        templates = known.len(),
        file = %template_file.display(),
        "relay template table loaded"
    );
    let settings: StreamSettings = config.stream_settings(known, options.exit_drain_timeout)?;
    let (records, input) = record_queue(relay.queue_records);
    let context = ListenerContext {
        registry: registry.clone(),
        records,
        limits: SessionLimits::new(&relay, config.message_size, &config.best_effort.domains),
        config: relay.clone(),
    };

    // Bind everything first: a wrong address fails the start, not later.
    let mut udp_sockets = Vec::new();
    for addr in &relay.udp_listen {
        let socket = bind_udp(*addr, relay.udp_receive_buffer_bytes)?;
        tracing::info!(addr = %socket.local_addr()?, "relay listening on UDP (IPFIX, NetFlow v9)");
        udp_sockets.push(socket);
    }
    let mut tcp_listeners = Vec::new();
    for addr in &relay.tcp_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "relay listening on TCP (IPFIX)");
        tcp_listeners.push(listener);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut udp_threads = Vec::new();
    for socket in udp_sockets {
        let (context, stop) = (context.clone(), Arc::clone(&stop));
        udp_threads.push(
            std::thread::Builder::new()
                .name("relay-udp".into())
                .spawn(move || udp_loop(socket, context, stop))?,
        );
    }
    for listener in tcp_listeners {
        tokio::spawn(serve_tcp(listener, context.clone(), shutdown_rx.clone()));
    }
    // The listeners hold the only senders: when they stop, the input ends
    // and the pool user drains.
    drop(context);

    let (second_signal_tx, second_signal) = tokio::sync::oneshot::channel::<()>();
    let stop_signal = Arc::clone(&stop);
    let mut signals = daemon_common::Signals::install().context("installing signal handlers")?;
    tokio::spawn(async move {
        signals.stop().await;
        tracing::info!("stopping: listeners closed, draining to the pool");
        stop_signal.store(true, Ordering::Relaxed);
        let _ = shutdown_tx.send(true);
        signals.stop().await;
        tracing::warn!("second signal: stopping without waiting for cookies");
        let _ = second_signal_tx.send(());
        // Keep the watch sender alive until here so listeners see `true`.
        drop(shutdown_tx);
    });
    let shutdown = async {
        let _ = second_signal.await;
    };
    let report =
        crate::stream::run_with_templates(settings, Some(&registry), input, shutdown, |progress| {
            if let crate::stream::Progress::Status {
                records_in,
                records_sent,
                buffered,
                pe,
            } = progress
            {
                tracing::debug!(records_in, records_sent, buffered, ?pe, "relay status");
            }
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    for thread in udp_threads {
        let _ = thread.join();
    }
    report
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Instant;

    use protocol::ipfix::{self, Template, TransportKind};

    use super::fixtures::{record, router_template};

    #[test]
    fn pool_user_core_announces_templates_learned_at_run_time() {
        use crate::pool_user::{Exporter, ExporterConfig, IPFIX_PPID, Output};
        use crate::sequence::ExporterState;
        use asap_client::PoolElementInfo;
        use protocol::rserpool::params::{
            TransportAddress, TransportKind as AsapTransportKind, TransportUse,
        };

        let now = Instant::now();
        let mut core = Exporter::new(
            ExporterConfig::new(7),
            ExporterState::new(7),
            Vec::new(),
            now,
            0,
            Default::default(),
        );
        core.start();
        let pe = PoolElementInfo {
            pe_id: 1,
            user_transport: TransportAddress {
                kind: AsapTransportKind::Sctp(TransportUse::DataPlusControl),
                port: 4739,
                addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            },
            policy: policies::PolicyParams::RoundRobin,
            registration_life: 30_000,
            home_registrar_id: 1,
        };
        // Select → Connect → Up.
        assert_eq!(core.poll_output(now), Some(Output::Select));
        core.handle_selected(now, Ok(vec![pe]));
        let Some(Output::Connect { association, .. }) = core.poll_output(now) else {
            panic!("no connect");
        };
        core.handle_association_up(now, association);
        while core.poll_output(now).is_some() {}

        let template = Template::new(256, 0, router_template(256).fields);
        assert!(!core.has_template(256));
        core.add_template(template.clone());
        assert!(core.has_template(256));
        core.push_record(1, 256, record(1).to_vec()).unwrap();
        let mut ipfix_messages = Vec::new();
        while let Some(output) = core.poll_output(now) {
            if let Output::Send {
                ppid: IPFIX_PPID,
                payload,
                ..
            } = output
            {
                ipfix_messages.push(payload);
            }
        }
        // The collector side must learn the template before the data.
        let mut collector = ipfix::Session::new(ipfix::SessionConfig::new(TransportKind::Tcp));
        let mut records = 0;
        for message in &ipfix_messages {
            let report = collector.process(message, 0, 0, |_| records += 1).unwrap();
            assert!(report.errors.is_empty(), "{report:?}");
        }
        assert_eq!(records, 1);
        assert_eq!(
            collector.template(1, 256).map(|t| (**t).clone()),
            Some(template)
        );
    }
}
