//! Connections go to the shares in turn, each served where its share is,
//! under the listener's bounds.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

use super::*;
use crate::ListenerOptions;

/// Serves `share` on a thread of its own: each connection is told the
/// thread's name and the number of its connection there, then held
/// until the client closes it.
fn serve_on_thread(share: Share, name: String) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut connections = share.incoming();
                let mut n = 0;
                while let Some(connection) = connections.next().await {
                    let mut connection = connection.unwrap();
                    n += 1;
                    let line = format!("{} {n}\n", std::thread::current().name().unwrap());
                    tokio::spawn(async move {
                        let _ = connection.write_all(line.as_bytes()).await;
                        let mut rest = Vec::new();
                        let _ = connection.read_to_end(&mut rest).await;
                    });
                }
            });
        })
        .unwrap()
}

async fn bind(options: ListenerOptions) -> (Listener, std::net::SocketAddr) {
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn line(client: &mut tokio::net::TcpStream) -> String {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).trim().to_owned()
}

#[tokio::test]
async fn connections_go_to_the_shares_in_turn_each_served_on_its_thread() {
    let (listener, addr) = bind(ListenerOptions::new("test", 16)).await;
    let threads: Vec<_> = listener
        .spread(3)
        .into_iter()
        .enumerate()
        .map(|(i, share)| serve_on_thread(share, format!("share-{i}")))
        .collect();
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        seen.push(line(&mut client).await);
        clients.push(client);
    }
    assert_eq!(
        seen,
        [
            "share-0 1",
            "share-1 1",
            "share-2 1",
            "share-0 2",
            "share-1 2",
            "share-2 2"
        ]
    );
    drop(clients);
    drop(threads);
}

#[tokio::test]
async fn the_header_timeout_counts_from_accept_on_the_serving_thread() {
    let options = ListenerOptions::new("test", 16).header_timeout(Duration::from_millis(200));
    let (listener, addr) = bind(options).await;
    let mut shares = listener.spread(1);
    let share = shares.pop().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut connection = share.incoming().next().await.unwrap().unwrap();
            // The client sends nothing: the read fails at the deadline.
            let mut byte = [0u8; 1];
            let _ = tx.send(connection.read(&mut byte).await.map_err(|e| e.kind()));
        });
    });
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the silent connection closed within 10 s")
        .unwrap();
    assert_eq!(read, Err(std::io::ErrorKind::TimedOut));
    thread.join().unwrap();
}

#[tokio::test]
async fn the_connection_limit_holds_over_all_shares() {
    let (listener, addr) = bind(ListenerOptions::new("test", 1)).await;
    let _threads: Vec<_> = listener
        .spread(2)
        .into_iter()
        .enumerate()
        .map(|(i, share)| serve_on_thread(share, format!("limit-{i}")))
        .collect();
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(line(&mut first).await, "limit-0 1");
    // The second waits in the backlog while the first is open...
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf))
            .await
            .is_err(),
        "served past the limit"
    );
    // ...and is served, by the next share, once it closes.
    drop(first);
    assert_eq!(line(&mut second).await, "limit-1 1");
}

#[tokio::test]
async fn the_listener_closes_once_every_share_is_dropped() {
    let (listener, addr) = bind(ListenerOptions::new("test", 16)).await;
    drop(listener.spread(2));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still accepting 5 s after every share was dropped");
}
