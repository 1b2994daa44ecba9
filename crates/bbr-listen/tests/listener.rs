//! The listener over real loopback sockets: what closes a connection and
//! what does not.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bbr_listen::{
    Listener, ListenerOptions,
    http::{HttpOptions, serve},
};
use bytes::Bytes;
use http_body_util::Full;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// Long enough for any test here to finish what it waits for.
const BOUND: Duration = Duration::from_secs(20);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn listener(name: &'static str, header_timeout: Duration, max: usize) -> Listener {
    let options = ListenerOptions::new(name, max).header_timeout(header_timeout);
    Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options)
        .await
        .unwrap()
}

/// Accepts for ever; each connection echoes what it reads until it fails
/// or ends.
fn echo(listener: Listener, accepted: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await;
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Reads until the server closes the connection; returns what it got.
async fn read_to_close(client: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match timeout(BOUND, client.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was not closed"),
        }
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let l = listener("silent", Duration::from_millis(200), 8).await;
    let addr = l.local_addr().unwrap();
    echo(l, Arc::default());
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert!(read_to_close(&mut client).await.is_empty());
}

#[tokio::test]
async fn half_a_head_is_closed_after_the_header_timeout() {
    let l = listener("half", Duration::from_millis(200), 8).await;
    let addr = l.local_addr().unwrap();
    echo(l, Arc::default());
    let mut client = TcpStream::connect(addr).await.unwrap();
    let half = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n";
    client.write_all(half).await.unwrap();
    // The bytes went through (echoed), and then the connection was closed.
    assert_eq!(read_to_close(&mut client).await, half);
}

#[tokio::test]
async fn a_complete_head_or_preface_lifts_the_deadline() {
    let header_timeout = Duration::from_millis(150);
    for first in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        H2_PREFACE,
        &b"GET / HTTP/1.1\nHost: a\n\n"[..],
    ] {
        let l = listener("complete", header_timeout, 8).await;
        let addr = l.local_addr().unwrap();
        echo(l, Arc::default());
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(first).await.unwrap();
        let mut back = vec![0u8; first.len()];
        client.read_exact(&mut back).await.unwrap();
        // Well past the header timeout, the connection still works.
        tokio::time::sleep(header_timeout * 4).await;
        client.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        timeout(BOUND, client.read_exact(&mut more))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&more, b"more");
    }
}

#[tokio::test]
async fn an_h2_client_that_sends_nothing_after_connecting_is_closed() {
    let l = listener("h2-silent", Duration::from_millis(200), 8).await;
    let addr = l.local_addr().unwrap();
    echo(l, Arc::default());
    let mut client = TcpStream::connect(addr).await.unwrap();
    // Part of the preface only.
    client.write_all(&H2_PREFACE[..10]).await.unwrap();
    assert_eq!(read_to_close(&mut client).await, &H2_PREFACE[..10]);
}

#[tokio::test]
async fn at_the_limit_the_listener_waits_and_takes_the_next_when_one_closes() {
    let l = listener("limited", Duration::from_millis(400), 2).await;
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    echo(l, Arc::clone(&accepted));
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // The third connects (the kernel's backlog) but is not accepted yet.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // The silent two time out; the third is taken and served.
    let mut back = [0u8; 4];
    timeout(BOUND, third.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"GET ");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    for mut s in silent {
        assert!(read_to_close(&mut s).await.is_empty());
    }
}

fn hello() -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_request| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
    })
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_after_its_idle_timeout() {
    let l = listener("http", Duration::from_secs(5), 8).await;
    let addr = l.local_addr().unwrap();
    let options = HttpOptions {
        idle_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    };
    tokio::spawn(serve(l, hello(), options, std::future::pending()));
    let mut client = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 512];
        let n = timeout(BOUND, client.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
    }
    // Then nothing: the connection is closed, with no answer.
    assert!(read_to_close(&mut client).await.is_empty());
}

#[tokio::test]
async fn serve_closes_a_silent_connection_and_serves_the_next() {
    let l = listener("http", Duration::from_millis(200), 1).await;
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(
        l,
        hello(),
        HttpOptions::default(),
        std::future::pending(),
    ));
    // The only slot is taken by a client that says nothing…
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // …and a real request waits for it to be closed, then is served.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
    assert!(read_to_close(&mut silent).await.is_empty());
}
