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

/// The server side of TLS: one certificate chain and its key, TLS 1.2 and
/// 1.3, ALPN `h2` when the client offers it.
#[derive(Clone)]
pub struct TlsAcceptor(Arc<SslAcceptor>);

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl TlsAcceptor {
    /// An acceptor serving `cert_chain` (PEM, the server's certificate
    /// first) with `key` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> io::Result<Self> {
        Self::build(cert_chain, key).map_err(io::Error::other)
    }

    fn build(cert_chain: &[u8], key: &[u8]) -> Result<Self, ErrorStack> {
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
        Ok(Self(Arc::new(builder.build())))
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

    /// Runs the server side of the handshake on `stream`.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream> {
        let ssl = Ssl::new(self.0.context()).map_err(io::Error::other)?;
        let mut stream = tokio_openssl::SslStream::new(ssl, stream).map_err(io::Error::other)?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(|e| match e.into_io_error() {
                Ok(io) => io,
                Err(ssl) => io::Error::new(io::ErrorKind::InvalidData, ssl.to_string()),
            })?;
        Ok(TlsStream(stream))
    }
}

/// One TLS connection of the server, after its handshake.
#[derive(Debug)]
pub struct TlsStream(tokio_openssl::SslStream<TcpStream>);

impl TlsStream {
    /// The server name the client sent, if any, as it was sent.
    pub fn server_name(&self) -> Option<&str> {
        self.0.ssl().servername(openssl::ssl::NameType::HOST_NAME)
    }

    /// The application protocol agreed by ALPN (`h2`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.0.ssl().selected_alpn_protocol()
    }
}

impl Connected for TlsStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
