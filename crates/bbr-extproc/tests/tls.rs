//! The binary's TLS port takes any server name a client sends (it serves
//! one certificate), as Go's TLS does: the cluster name Envoy sends on
//! Istio with auto-SNI, an ordinary DNS name, and no name at all. Each
//! client is a real TLS client (OpenSSL) over loopback that verifies the
//! certificate it was given and asks grpc.health.v1 over HTTP/2 on the
//! connection it made.

mod support;

use std::{net::SocketAddr, pin::Pin};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::{
    ssl::{NameType, SslConnector, SslMethod, SslVerifyMode},
    x509::X509,
};
use support::{WAIT, binary::start_binary};
use tokio::net::TcpStream;

/// The server name Envoy sends to an ext_proc cluster on Istio.
const ISTIO_CLUSTER_NAME: &str = "outbound|9004||body-based-router.default.svc.cluster.local";

/// A TLS handshake with `server_name` (none if `None`) that trusts only
/// `ca`, then one gRPC health check on the connection; returns the
/// agreed ALPN protocol and the health check's response body.
async fn health_over_tls(
    addr: SocketAddr,
    ca: &X509,
    server_name: Option<&str>,
) -> (Option<Vec<u8>>, Bytes) {
    let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
    connector.cert_store_mut().add_cert(ca.clone()).unwrap();
    connector.set_verify(SslVerifyMode::PEER);
    connector.set_alpn_protos(b"\x02h2").unwrap();
    let mut config = connector.build().configure().unwrap();
    // The certificate is checked against the CA, not against the name (as
    // Envoy does for an ext_proc cluster with a trusted CA and no SAN match).
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(server_name.is_some());
    let ssl = config.into_ssl(server_name.unwrap_or("unused")).unwrap();
    assert_eq!(ssl.servername(NameType::HOST_NAME), server_name);

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    tokio::time::timeout(WAIT, Pin::new(&mut tls).connect())
        .await
        .expect("the handshake timed out")
        .unwrap_or_else(|e| panic!("handshake with server name {server_name:?} failed: {e}"));
    let alpn = tls.ssl().selected_alpn_protocol().map(<[u8]>::to_vec);

    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    // An empty HealthCheckRequest (service ""), length-prefixed.
    let request = http::Request::post(format!("https://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("the health check timed out")
        .unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .cloned();
    assert_eq!(status.as_ref().map(|v| v.as_bytes()), Some(&b"0"[..]));
    (alpn, collected.to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_server_name_gets_the_one_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("tls.key"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    let ca = X509::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let (_process, grpc, _, _) = start_binary(&[
        "--secure-serving",
        "--cert-path",
        dir.path().to_str().unwrap(),
        "-v",
        "0",
    ]);

    for name in [
        Some(ISTIO_CLUSTER_NAME),
        Some("body-based-router.default.svc.cluster.local"),
        None,
    ] {
        let (alpn, body) = health_over_tls(grpc, &ca, name).await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "{name:?}");
        // HealthCheckResponse { status: SERVING }, length-prefixed.
        assert_eq!(&body[..], &[0, 0, 0, 0, 2, 0x08, 0x01], "{name:?}");
    }
}
