//! TLS client side of `exporter generate --transport tls` (RFC 7011
//! section 11): blocking rustls over a TCP socket, as the generator is
//! synchronous.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::generate::GenerateTls;

/// A blocking TLS client stream over TCP (`exporter generate`).
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the TLS handshake before any record is counted
/// as sent, so a collector we do not trust fails the run at once with the
/// reason (e.g. an unknown issuer: `--ca-file` is not the collector's CA).
pub fn connect(target: SocketAddr, tls: &GenerateTls) -> Result<TlsStream> {
    let config = transport::tls::client_config(&tls.files)?;
    let name = transport::tls::server_name(tls.server_name.as_deref(), target.ip())?;
    let mut tcp = TcpStream::connect(target)
        .with_context(|| format!("connecting TCP to {target} for TLS"))?;
    tcp.set_nodelay(true)?;
    let mut connection = rustls::ClientConnection::new(config, name)
        .with_context(|| format!("starting TLS to {target}"))?;
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp).with_context(|| {
            format!(
                "TLS handshake with {target} failed (does --ca-file hold the CA that signed \
                 the collector's certificate, and does the certificate name {}?)",
                tls.server_name
                    .clone()
                    .unwrap_or_else(|| target.ip().to_string())
            )
        })?;
    }
    Ok(rustls::StreamOwned::new(connection, tcp))
}

/// Ends a TLS session cleanly: the buffered records, then close_notify, so
/// the collector knows the stream was not cut short. Then it waits for the
/// collector to close in turn, reading what it sent meanwhile (TLS 1.3
/// session tickets): closing a socket with unread data makes the kernel
/// send a reset, which can throw away records the collector has not read.
pub fn close(stream: &mut std::io::BufWriter<TlsStream>) -> Result<()> {
    use std::io::Read;
    stream.flush()?;
    let tls = stream.get_mut();
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock)?;
    }
    tls.sock.flush()?;
    tls.sock.shutdown(std::net::Shutdown::Write)?;
    tls.sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut sink = [0u8; 4096];
    loop {
        match tls.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // The collector closing without its own close_notify is fine:
            // ours was sent and everything before it delivered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("waiting for the collector to close the TLS session"));
            }
        }
    }
}
