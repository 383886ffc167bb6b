//! No client can pin the server: sockets that say nothing, idle keep-alive and h2 connections,
//! unfinished h2 HEADERS and trickled bodies are all cut by deadlines; at the connection cap,
//! idle connections make room for new ones.

use std::time::Duration;

use relay_core::RelaySettings;
use relay_server::{BodyPace, ServerSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::{account, Harness};

fn short_deadlines() -> ServerSettings {
    ServerSettings {
        handshake_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        body_pace: BodyPace {
            bytes: 1024,
            window: Duration::from_secs(1),
        },
        ..ServerSettings::default()
    }
}

async fn relay(settings: ServerSettings) -> Harness {
    Harness::start_with(
        vec![account("main", "sk-ant-main", 0)],
        RelaySettings::default(),
        settings,
    )
    .await
}

fn address(harness: &Harness) -> String {
    harness.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the socket; how long that took. Fails after 8 s.
async fn closed_after(socket: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(8), socket.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open for 8 s"),
        }
    }
}

async fn metrics_text(harness: &Harness) -> String {
    reqwest::get(format!("{}/metrics", harness.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

#[tokio::test]
async fn a_silent_socket_is_closed_at_the_handshake_deadline() {
    let harness = relay(short_deadlines()).await;
    let mut socket = TcpStream::connect(address(&harness)).await.unwrap();
    let waited = closed_after(&mut socket).await;
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

#[tokio::test]
async fn an_idle_h2c_connection_and_an_unfinished_h2_stream_are_closed() {
    let harness = relay(short_deadlines()).await;
    let mut idle = TcpStream::connect(address(&harness)).await.unwrap();
    idle.write_all(H2_PREFACE).await.unwrap();
    idle.write_all(H2_SETTINGS).await.unwrap();
    let mut unfinished = TcpStream::connect(address(&harness)).await.unwrap();
    unfinished.write_all(H2_PREFACE).await.unwrap();
    unfinished.write_all(H2_SETTINGS).await.unwrap();
    // HEADERS on stream 1 without END_HEADERS; the CONTINUATION never comes.
    let block = [0x82u8, 0x86, 0x84]; // :method GET, :scheme http, :path /
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x1, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    unfinished.write_all(&frame).await.unwrap();
    for socket in [&mut idle, &mut unfinished] {
        let waited = closed_after(socket).await;
        assert!(waited < Duration::from_secs(4), "{waited:?}");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_last_request() {
    let harness = relay(short_deadlines()).await;
    let mut socket = TcpStream::connect(address(&harness)).await.unwrap();
    socket
        .write_all(b"GET /health HTTP/1.1\r\nhost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let waited = closed_after(&mut socket).await;
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

#[tokio::test]
async fn a_trickled_body_gets_408_on_the_relay_and_on_the_login() {
    let harness = relay(short_deadlines()).await;
    for (path, auth) in [
        ("/v1/messages", format!("x-api-key: {}\r\n", harness.key)),
        ("/admin/v1/login", String::new()),
    ] {
        let mut socket = TcpStream::connect(address(&harness)).await.unwrap();
        socket
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: relay\r\n{auth}content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let started = Instant::now();
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            tokio::select! {
                read = socket.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&buffer[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(300)) => {
                    // One byte every 300 ms: far below 1 KiB a second.
                    if socket.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
            if response.windows(4).any(|window| window == b"\r\n\r\n") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(6),
                "{path}: still reading"
            );
        }
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
    }
}

#[tokio::test]
async fn at_the_cap_idle_connections_make_room_for_a_real_client() {
    let harness = relay(ServerSettings {
        max_connections: 8,
        ..ServerSettings::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(address(&harness)).await.unwrap());
    }
    let started = Instant::now();
    let health = reqwest::get(format!("{}/health", harness.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The oldest idle sockets were closed to admit the newer ones.
    let waited = closed_after(&mut idle[0]).await;
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    let metrics = metrics_text(&harness).await;
    assert!(
        metrics.contains("claude_relay_connections_closed_total{reason=\"evicted\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_allowed_hosts_set_another_host_name_is_refused() {
    let harness = relay(ServerSettings {
        allowed_hosts: Some(vec!["relay.example".to_owned(), "127.0.0.1".to_owned()]),
        ..ServerSettings::default()
    })
    .await;
    let health = format!("{}/health", harness.url);
    let by_address = harness.client.get(&health).send().await.unwrap();
    assert_eq!(by_address.status(), 200);
    let named = harness
        .client
        .get(&health)
        .header("host", "relay.example:3180")
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 200);
    let rebound = harness
        .client
        .get(&health)
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused_until_one_frees() {
    let harness = relay(ServerSettings {
        max_connections: 4,
        ..ServerSettings::default()
    })
    .await;
    harness.mock.script(
        "sk-ant-main",
        std::iter::repeat_n(
            relay_testkit::Behavior::SlowFirstByte(Duration::from_millis(1_500)),
            4,
        ),
    );
    // Four connections, each with a request in flight (one client per connection).
    let busy: Vec<_> = (0..4)
        .map(|n| {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let request = client
                .post(format!("{}/v1/messages", harness.url))
                .header("x-api-key", &harness.key)
                .json(
                    &serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
                    "messages": [{"role": "user", "content": format!("busy {n}")}]}),
                )
                .send();
            tokio::spawn(request)
        })
        .collect();
    for _ in 0..100 {
        if harness.mock.requests().len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(harness.mock.requests().len(), 4, "four requests in flight");
    // Nothing is idle to evict: the fifth connection is closed at once, unanswered.
    let mut refused = TcpStream::connect(address(&harness)).await.unwrap();
    let _ = refused
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let waited = closed_after(&mut refused).await;
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    for request in busy {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    // Freed: the next client is served.
    let health = reqwest::get(format!("{}/health", harness.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = metrics_text(&harness).await;
    assert!(
        metrics.contains("claude_relay_connections_closed_total{reason=\"refused\"}"),
        "{metrics}"
    );
}
