//! TLS on the ext_proc port (`--secure-serving`), with OpenSSL.
//!
//! The server has one certificate, so the server name a client sends
//! (SNI) chooses nothing and any name is accepted, as Go's `crypto/tls`
//! does in the Go body-based router and the endpoint picker. That matters
//! on Istio: a `SIMPLE` DestinationRule turns on auto-SNI and Envoy's
//! `envoy_grpc` client then sends the cluster name,
//! `outbound|9004||body-based-router.default.svc.cluster.local`, which is
//! not a DNS name. rustls (0.23) answers such a name with a fatal
//! `illegal_parameter` alert and has no setting to ignore it; the
//! ClientHello cannot be rewritten before the handshake either, since both
//! ends hash it into the transcript that the Finished messages check.
//! OpenSSL takes any name of up to 255 bytes without a NUL.
//!
//! [`TlsAcceptor::accept`] makes the server side of one handshake; the
//! binary runs each in a task of its own through `bbr_listen`'s
//! `Listener::incoming_with`, bounded by the header timeout counted from
//! accept, so that a slow client holds up no other.

use std::{
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bbr_listen::ReadAhead;
use openssl::{
    error::ErrorStack,
    pkey::PKey,
    ssl::{AlpnError, Ssl, SslAcceptor, SslMethod, select_next_proto},
    x509::X509,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::serve::READ_AHEAD;

/// The server side of TLS: one certificate chain and its key, TLS 1.2 and
/// 1.3, ALPN `h2` when the client offers it. A client that sends a DNS
/// name, or no name, is served by rustls (cheaper per record than
/// OpenSSL 3: see BENCHMARKS.md); one whose server name is not a DNS name
/// (Istio's cluster name) by OpenSSL, which takes it.
#[derive(Clone)]
pub struct TlsAcceptor {
    openssl: Arc<SslAcceptor>,
    rustls: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// An acceptor serving `cert_chain` (PEM, the server's certificate
    /// first) with `key` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> io::Result<Self> {
        Ok(Self {
            openssl: Self::build(cert_chain, key).map_err(io::Error::other)?,
            rustls: rustls_acceptor(cert_chain, key)?,
        })
    }

    fn build(cert_chain: &[u8], key: &[u8]) -> Result<Arc<SslAcceptor>, ErrorStack> {
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        let mut chain = X509::stack_from_pem(cert_chain)?.into_iter();
        let leaf = chain.next().ok_or_else(ErrorStack::get)?;
        builder.set_certificate(&leaf)?;
        for ca in chain {
            builder.add_extra_chain_cert(ca)?;
        }
        let key = PKey::private_key_from_pem(key)?;
        builder.set_private_key(&key)?;
        builder.check_private_key()?;
        // gRPC is HTTP/2; a client that offers no `h2` (or no ALPN at all)
        // still gets its handshake, as Go's server does.
        builder.set_alpn_select_callback(|_, offered| {
            select_next_proto(b"\x02h2", offered).ok_or(AlpnError::NOACK)
        });
        Ok(Arc::new(builder.build()))
    }

    /// An acceptor serving `dir/tls.crt` with `dir/tls.key` (the layout of
    /// a Kubernetes TLS secret mounted as a volume).
    pub fn from_dir(dir: &Path) -> io::Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        Self::from_pem(&read("tls.crt")?, &read("tls.key")?)
    }

    /// An acceptor serving a freshly generated self-signed certificate for
    /// `localhost` and `bbr-extproc` (what `--secure-serving` uses when no
    /// certificate is given; Envoy does not verify an ext_proc server's
    /// certificate unless told to).
    pub fn self_signed() -> io::Result<Self> {
        let names = vec!["localhost".to_owned(), "bbr-extproc".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
        Self::from_pem(
            certified.cert.pem().as_bytes(),
            certified.signing_key.serialize_pem().as_bytes(),
        )
    }

    /// Runs the server side of the handshake on `stream`, with rustls or
    /// OpenSSL as the server name in its ClientHello says (read without
    /// taking it off the socket). The TLS stack reads the socket through a
    /// [`ReadAhead`] of [`READ_AHEAD`] bytes: rustls asks for 4 KiB at a
    /// time, a quarter of a full record.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream> {
        let name = peek_server_name(&stream).await?;
        let stream = ReadAhead::new(stream, READ_AHEAD);
        if name != ServerName::Other {
            let tls = self.rustls.accept(stream).await?;
            return Ok(TlsStream(Stack::Rustls(Box::new(tls))));
        }
        let ssl = Ssl::new(self.openssl.context()).map_err(io::Error::other)?;
        let mut stream = tokio_openssl::SslStream::new(ssl, stream).map_err(io::Error::other)?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(|e| match e.into_io_error() {
                Ok(io) => io,
                Err(ssl) => io::Error::new(io::ErrorKind::InvalidData, ssl.to_string()),
            })?;
        Ok(TlsStream(Stack::OpenSsl(stream)))
    }
}

/// rustls serving the same certificate chain and key.
fn rustls_acceptor(cert_chain: &[u8], key: &[u8]) -> io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::{
        ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let certs = CertificateDer::pem_slice_iter(cert_chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid(&e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What the server name of a ClientHello is, as far as the TLS stack
/// choice goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerName {
    /// No server name: rustls.
    Absent,
    /// A DNS name (or an IP address, which rustls ignores): rustls.
    Dns,
    /// Anything else rustls would refuse, or a ClientHello this does not
    /// read (spread over several records, not TLS): OpenSSL.
    Other,
}

/// The most of a connection's first bytes looked at: one TLS record.
const MAX_RECORD: usize = 5 + (1 << 14);

/// Looks at the connection's first TLS record without taking it off the
/// socket (the TLS stack reads it next) and says what server name its
/// ClientHello carries.
async fn peek_server_name(stream: &TcpStream) -> io::Result<ServerName> {
    let mut buf = vec![0u8; MAX_RECORD];
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(name) = client_hello_server_name(&buf[..n]) {
            return Ok(name);
        }
        // The rest of the record is on its way (a ClientHello with large
        // key shares spans two TCP segments). `peek` leaves the socket
        // readable, so wait rather than spin, longer each time: a client
        // that stalls mid-record costs a few wake-ups a second until the
        // listener's deadline closes it.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(128));
    }
}

/// The server name of the ClientHello at the start of `buf`, or `None`
/// when its first record is not all there yet.
fn client_hello_server_name(buf: &[u8]) -> Option<ServerName> {
    if buf.len() < 5 {
        return None;
    }
    if buf[0] != 0x16 {
        return Some(ServerName::Other);
    }
    let record = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < record {
        return None;
    }
    Some(read_client_hello(&buf[5..record]).unwrap_or(ServerName::Other))
}

/// The server name of a ClientHello handshake message; `None` when it is
/// malformed or does not fit in `msg`.
fn read_client_hello(msg: &[u8]) -> Option<ServerName> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn u8(&mut self) -> Option<usize> {
            Some(usize::from(self.take(1)?[0]))
        }
        fn u16(&mut self) -> Option<usize> {
            let b = self.take(2)?;
            Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
        }
        fn vec8(&mut self) -> Option<&'a [u8]> {
            let n = self.u8()?;
            self.take(n)
        }
        fn vec16(&mut self) -> Option<&'a [u8]> {
            let n = self.u16()?;
            self.take(n)
        }
    }
    let mut c = Cursor(msg);
    let header = c.take(4)?;
    if header[0] != 1 {
        return None;
    }
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    let mut c = Cursor(c.take(len)?);
    c.take(2 + 32)?; // version, random
    c.vec8()?; // session id
    c.vec16()?; // cipher suites
    c.vec8()?; // compression methods
    if c.0.is_empty() {
        return Some(ServerName::Absent);
    }
    let mut extensions = Cursor(c.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Cursor(extensions.vec16()?);
        if kind != 0 {
            continue;
        }
        let mut names = Cursor(data.vec16()?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == 0 {
                let valid = std::str::from_utf8(name).is_ok_and(|name| {
                    name.parse::<std::net::IpAddr>().is_ok()
                        || tokio_rustls::rustls::pki_types::DnsName::try_from(name).is_ok()
                });
                return Some(if valid {
                    ServerName::Dns
                } else {
                    ServerName::Other
                });
            }
        }
        return Some(ServerName::Other);
    }
    Some(ServerName::Absent)
}

/// One TLS connection of the server, after its handshake.
#[derive(Debug)]
pub struct TlsStream(Stack);

#[derive(Debug)]
enum Stack {
    Rustls(Box<tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>>),
    OpenSsl(tokio_openssl::SslStream<ReadAhead<TcpStream>>),
}

impl TlsStream {
    /// The server name the client sent, if any (lowercased by rustls).
    pub fn server_name(&self) -> Option<&str> {
        match &self.0 {
            Stack::Rustls(s) => s.get_ref().1.server_name(),
            Stack::OpenSsl(s) => s.ssl().servername(openssl::ssl::NameType::HOST_NAME),
        }
    }

    /// The application protocol agreed by ALPN (`h2`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.0 {
            Stack::Rustls(s) => s.get_ref().1.alpn_protocol(),
            Stack::OpenSsl(s) => s.ssl().selected_alpn_protocol(),
        }
    }

    /// Which TLS stack serves it: `"rustls"` or `"openssl"`.
    pub fn stack(&self) -> &'static str {
        match &self.0 {
            Stack::Rustls(_) => "rustls",
            Stack::OpenSsl(_) => "openssl",
        }
    }
}

impl Connected for TlsStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match &self.0 {
            Stack::Rustls(s) => s.get_ref().0.get_ref().connect_info(),
            Stack::OpenSsl(s) => s.get_ref().get_ref().connect_info(),
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Stack::Rustls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stack::OpenSsl(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Stack::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stack::OpenSsl(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Stack::Rustls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stack::OpenSsl(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Stack::Rustls(s) => s.is_write_vectored(),
            Stack::OpenSsl(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Stack::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stack::OpenSsl(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Stack::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stack::OpenSsl(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::SslConnector;
    use tokio::io::AsyncReadExt;

    /// The first TLS record an OpenSSL client sends with `server_name`.
    async fn client_hello(server_name: Option<&str>) -> Vec<u8> {
        let mut config = SslConnector::builder(SslMethod::tls_client())
            .unwrap()
            .build()
            .configure()
            .unwrap();
        config.set_use_server_name_indication(server_name.is_some());
        config.set_verify_hostname(false);
        let ssl = config.into_ssl(server_name.unwrap_or("unused")).unwrap();
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let handshake = tokio::spawn(async move {
            let mut tls = tokio_openssl::SslStream::new(ssl, client).unwrap();
            let _ = Pin::new(&mut tls).connect().await;
        });
        let mut record = vec![0u8; 5];
        server.read_exact(&mut record).await.unwrap();
        let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        record.resize(5 + len, 0);
        server.read_exact(&mut record[5..]).await.unwrap();
        handshake.abort();
        record
    }

    #[tokio::test]
    async fn the_server_name_picks_the_stack() {
        let cases = [
            (Some("localhost"), ServerName::Dns),
            (
                Some("body-based-router.default.svc.cluster.local"),
                ServerName::Dns,
            ),
            (
                Some("outbound|9004||body-based-router.default.svc.cluster.local"),
                ServerName::Other,
            ),
            (None, ServerName::Absent),
        ];
        for (name, expected) in cases {
            let hello = client_hello(name).await;
            assert_eq!(client_hello_server_name(&hello), Some(expected), "{name:?}");
            // Any part of the record short of all of it: wait for more.
            for cut in [0, 3, 5, hello.len() / 2, hello.len() - 1] {
                assert_eq!(
                    client_hello_server_name(&hello[..cut]),
                    None,
                    "{name:?} {cut}"
                );
            }
            // A damaged ClientHello goes to OpenSSL, which refuses it.
            let mut damaged = hello.clone();
            damaged[6] = 0xff; // a handshake longer than its record
            assert_eq!(client_hello_server_name(&damaged), Some(ServerName::Other));
        }
        assert_eq!(
            client_hello_server_name(b"GET / HTTP/1.1\r\n\r\n"),
            Some(ServerName::Other)
        );
    }
}
