//! Test proxies on loopback: an HTTP CONNECT proxy and a SOCKS5 proxy, each with optional
//! username/password and a count of the tunnels it opened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    HttpConnect,
    Socks5,
}

/// A running test proxy; stops when dropped.
#[derive(Debug)]
pub struct TestProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    protocol: ProxyProtocol,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestProxy {
    /// Starts a proxy that requires these credentials (if any).
    pub async fn start(protocol: ProxyProtocol, credentials: Option<(&str, &str)>) -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(error) => unreachable!("cannot bind the test proxy: {error}"),
        };
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let credentials = credentials.map(|(user, pass)| (user.to_owned(), pass.to_owned()));
        let counter = tunnels.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let credentials = credentials.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = match protocol {
                        ProxyProtocol::HttpConnect => {
                            serve_connect(client, credentials, counter).await
                        }
                        ProxyProtocol::Socks5 => serve_socks(client, credentials, counter).await,
                    };
                });
            }
        });
        Self {
            addr,
            tunnels,
            task,
            protocol,
        }
    }

    /// The proxy URL, with these credentials in it.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        let scheme = match self.protocol {
            ProxyProtocol::HttpConnect => "http",
            ProxyProtocol::Socks5 => "socks5",
        };
        match credentials {
            Some((user, pass)) => format!("{scheme}://{user}:{pass}@{}", self.addr),
            None => format!("{scheme}://{}", self.addr),
        }
    }

    /// Tunnels opened for clients that authenticated.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }
}

async fn relay_bytes(
    mut client: TcpStream,
    target: &str,
    counter: &AtomicUsize,
) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(target).await?;
    counter.fetch_add(1, Ordering::Relaxed);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn serve_connect(
    mut client: TcpStream,
    credentials: Option<(String, String)>,
    counter: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let target = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("CONNECT "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    if let Some((user, pass)) = credentials {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let expected = format!("basic {encoded}");
        let authorized = text.lines().any(|line| {
            line.to_ascii_lowercase()
                .starts_with("proxy-authorization:")
                && line[20..].trim().eq_ignore_ascii_case(&expected)
        });
        if !authorized {
            client
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
                )
                .await?;
            return Ok(());
        }
    }
    client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    relay_bytes(client, &target, &counter).await
}

async fn serve_socks(
    mut client: TcpStream,
    credentials: Option<(String, String)>,
    counter: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).await?;
    if let Some((user, pass)) = credentials {
        if !methods.contains(&2) {
            client.write_all(&[5, 0xff]).await?;
            return Ok(());
        }
        client.write_all(&[5, 2]).await?;
        let mut version_and_len = [0u8; 2];
        client.read_exact(&mut version_and_len).await?;
        let mut given_user = vec![0u8; usize::from(version_and_len[1])];
        client.read_exact(&mut given_user).await?;
        let mut pass_len = [0u8; 1];
        client.read_exact(&mut pass_len).await?;
        let mut given_pass = vec![0u8; usize::from(pass_len[0])];
        client.read_exact(&mut given_pass).await?;
        if given_user != user.as_bytes() || given_pass != pass.as_bytes() {
            client.write_all(&[1, 1]).await?;
            return Ok(());
        }
        client.write_all(&[1, 0]).await?;
    } else {
        client.write_all(&[5, 0]).await?;
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        _ => return Ok(()),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    relay_bytes(client, &target, &counter).await
}
