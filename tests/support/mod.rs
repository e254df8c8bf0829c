//! A real `traum serve` for the integration tests: the binary started on an
//! ephemeral port with the tiny fixture model, talked to over real HTTP and a
//! real WebSocket.

#![allow(dead_code)]

pub mod qdrant;
mod signals;
pub use signals::*;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The repository root (these tests belong to `server/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

pub fn tiny_model() -> PathBuf {
    repo_root().join("tests/fixtures/clap/models/tiny-a")
}

/// The second tiny model: other weights, 20-dimensional embeddings (tiny-a's are 24).
#[allow(dead_code)]
pub fn tiny_model_b() -> PathBuf {
    repo_root().join("tests/fixtures/clap/models/tiny-b")
}

pub fn audio_fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/audio").join(name)
}

/// The `traum` binary, built by cargo for this test.
pub fn traum() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_traum"))
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// Options of a test server.
#[derive(Clone, Default)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run the server with its data directory on a tmpfs of this size, in a mount namespace
    /// of its own (`unshare -m`; root only).
    pub tmpfs: Option<String>,
    /// Another model than [`tiny_model`].
    pub model: Option<PathBuf>,
}

impl Options {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn tmpfs(mut self, size: &str) -> Self {
        self.tmpfs = Some(size.into());
        self
    }
    #[allow(dead_code)]
    pub fn model(mut self, dir: PathBuf) -> Self {
        self.model = Some(dir);
        self
    }
}

/// A process's resident memory, KiB: all of it, its peak, and the two kinds it is made of
/// (anonymous: heap and stacks; file-backed: mapped files such as the index's segments and
/// WAL, which the kernel can drop and reread).
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
    pub anon: u64,
    pub file: u64,
}

impl Server {
    pub async fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, Options::default()).await
    }

    pub async fn start_with(data_dir: &Path, options: Options) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.with_extension(format!("log.{}", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = match &options.tmpfs {
            None => Command::new(traum()),
            Some(size) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "sh", "-c"])
                    .arg(format!(
                        "mount -t tmpfs -o size={size} tmpfs \"$0\" && exec \"$@\""
                    ))
                    .arg(data_dir)
                    .arg(traum());
                c
            }
        };
        serve_args(&mut cmd, data_dir, &options);
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().expect("start traum serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("server did not start; log:\n{}", read(&log)))
            .unwrap()
            .unwrap_or_else(|| panic!("server exited; log:\n{}", read(&log)));
        let base = line
            .strip_prefix("traum listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            log,
            http: reqwest::Client::new(),
        }
    }

    /// Starts `traum serve` like [`Server::start_with`] but expects it to end by itself (a
    /// test hook aborting it, say): waits up to `timeout` for the exit and returns it with
    /// the log.
    pub async fn run_to_exit(
        data_dir: &Path,
        options: Options,
        timeout: Duration,
    ) -> (std::process::ExitStatus, String) {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.with_extension(format!("exit-log.{}", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(traum());
        serve_args(&mut cmd, data_dir, &options);
        cmd.stdout(Stdio::null()).stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().expect("start traum serve");
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the server did not exit within {timeout:?}; log:\n{}",
                    read(&log)
                )
            })
            .unwrap();
        (status, read(&log))
    }

    /// The server process's resident memory now and at its peak, KiB (Linux).
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        let m = self.memory_kib()?;
        Some((m.rss, m.peak))
    }

    /// The server's memory now (from `/proc/PID/status`), in KiB.
    #[allow(dead_code)]
    pub fn memory_kib(&self) -> Option<Memory> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        };
        Some(Memory {
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")? + field("RssShmem:").unwrap_or(0),
        })
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().expect("running") as i32;
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("server did not stop on SIGTERM; log:\n{}", self.log()))
            .unwrap();
        assert!(
            exit.success(),
            "server exited with {exit}; log:\n{}",
            self.log()
        );
    }

    /// kill -9.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// A GraphQL request; the whole response (data and errors).
    pub async fn post(&self, query: &str, variables: Value) -> Value {
        let res = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap();
        res.json().await.unwrap()
    }

    /// A GraphQL request that must succeed; its `data`.
    pub async fn query(&self, query: &str, variables: Value) -> Value {
        let res = self.post(query, variables).await;
        assert!(
            res.get("errors").is_none_or(Value::is_null),
            "GraphQL errors: {res:#}"
        );
        res["data"].clone()
    }

    /// A GraphQL multipart request (the spec's `operations`, `map`, files):
    /// `files[i]` goes to the variable path `paths[i]`.
    pub async fn multipart(
        &self,
        query: &str,
        variables: Value,
        files: Vec<(&str, String, Vec<u8>)>,
    ) -> (reqwest::StatusCode, Value) {
        let mut form = reqwest::multipart::Form::new().text(
            "operations",
            json!({ "query": query, "variables": variables }).to_string(),
        );
        let map: serde_json::Map<String, Value> = files
            .iter()
            .enumerate()
            .map(|(i, (path, _, _))| (i.to_string(), json!([path])))
            .collect();
        form = form.text("map", Value::Object(map).to_string());
        for (i, (_, name, bytes)) in files.into_iter().enumerate() {
            form = form.part(
                i.to_string(),
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        }
        let res = self
            .http
            .post(self.url("/graphql"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap())
    }

    /// `uploadFiles` with these files; the outcomes.
    pub async fn upload_files(&self, files: Vec<(String, Vec<u8>)>) -> Vec<Value> {
        let n = files.len();
        let paths: Vec<String> = (0..n).map(|i| format!("variables.files.{i}")).collect();
        let (status, res) = self
            .multipart(
                "mutation($files: [Upload!]!) { uploadFiles(files: $files) { filename created file { id status originalName } error { code message } } }",
                json!({ "files": vec![Value::Null; n] }),
                files
                    .into_iter()
                    .zip(&paths)
                    .map(|((name, bytes), p)| (p.as_str(), name, bytes))
                    .collect(),
            )
            .await;
        assert!(status.is_success(), "{status}: {res:#}");
        res["data"]["uploadFiles"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{res:#}"))
    }

    /// `uploadFile`; the whole response.
    pub async fn upload_file(&self, name: &str, bytes: Vec<u8>) -> (reqwest::StatusCode, Value) {
        self.multipart(
            "mutation($file: Upload!) { uploadFile(file: $file) { id status originalName container sizeBytes } }",
            json!({ "file": null }),
            vec![("variables.file", name.to_string(), bytes)],
        )
        .await
    }

    /// Opens a subscription over graphql-transport-ws.
    pub async fn subscribe(&self, query: &str, variables: Value) -> Subscription {
        Subscription::open(&self.base, query, variables, Protocol::TransportWs).await
    }

    /// Opens a subscription and waits for its SUBSCRIBED event (the query must select
    /// `kind`): from then on no event is missed, so the caller may act at once.
    pub async fn subscribe_live(&self, query: &str, field: &str) -> Subscription {
        let mut sub = self.subscribe(query, json!({})).await;
        let first = sub
            .next_timeout(Duration::from_secs(30))
            .await
            .expect("the subscription's first event");
        assert_eq!(first[field]["kind"], "SUBSCRIBED", "{first:#}");
        sub
    }

    pub async fn health(&self) -> Value {
        self.query(
            "{ health { status version model { id device dtype loaded embeddingDim } vectorStore { kind files windows points } queue { queued processing indexed failed embedPending } } }",
            json!({}),
        )
        .await["health"]
            .clone()
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .http()
            .get(self.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse().ok())
    }

    /// Waits (up to 60 s, looking every 50 ms) until the metric satisfies `done`; returns
    /// its value. For states the server reaches by itself (background maintenance) and
    /// announces nowhere else.
    pub async fn wait_for_metric(&self, name: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.metric(name).await;
            if let Some(v) = value.filter(|&v| done(v)) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} stayed at {value:?} for 60 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every file is INDEXED or FAILED (via a subscription).
    pub async fn wait_done(&self, ids: &[String]) -> Vec<Value> {
        let mut sub = self
            .subscribe(
                "subscription($ids: [ID!]!) { fileEvents(ids: $ids) { fileId kind status windowsDone windowsTotal errorCode errorMessage } }",
                json!({ "ids": ids }),
            )
            .await;
        let mut done: std::collections::HashMap<String, Value> = Default::default();
        while done.len() < ids.len() {
            let e = sub
                .next_timeout(Duration::from_secs(120))
                .await
                .unwrap_or_else(|| panic!("no event; done {done:?}; log:\n{}", self.log()));
            let e = e["fileEvents"].clone();
            if matches!(e["status"].as_str(), Some("INDEXED" | "FAILED")) {
                done.insert(e["fileId"].as_str().unwrap().to_string(), e);
            }
        }
        ids.iter().map(|id| done[id].clone()).collect()
    }
}

/// `traum serve` on a free port with the tiny model and the test's options; none of the
/// caller's own settings leak in.
fn serve_args(cmd: &mut Command, data_dir: &Path, options: &Options) {
    cmd.arg("serve")
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--model")
        .arg(options.model.clone().unwrap_or_else(tiny_model))
        .args(&options.args)
        .env("RUST_LOG", "info,sqlx=warn,sea_orm=warn")
        .env_remove("DATABASE_URL")
        .env_remove("TRAUM_BIND")
        .env_remove("TRAUM_DATA_DIR")
        .env_remove("TRAUM_MODEL")
        .kill_on_drop(true);
    for (k, v) in &options.env {
        cmd.env(k, v);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws` (graphql-ws library).
    TransportWs,
    /// The legacy `graphql-ws` (subscriptions-transport-ws).
    LegacyWs,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a subscription's next message was.
enum Event {
    Data(Value),
    Error(Value),
    End(String),
}

/// One subscription on its own WebSocket.
pub struct Subscription {
    ws: Ws,
    protocol: Protocol,
}

impl Subscription {
    pub async fn open(base: &str, query: &str, variables: Value, protocol: Protocol) -> Self {
        Self::try_open(base, query, variables, protocol, json!({}))
            .await
            .unwrap_or_else(|e| panic!("subscription refused: {e}"))
    }

    /// Opens a subscription with this `connection_init` payload; `Err` if the server
    /// refuses the connection (closes it, or answers `connection_error`).
    pub async fn try_open(
        base: &str,
        query: &str,
        variables: Value,
        protocol: Protocol,
        init_payload: Value,
    ) -> Result<Self, String> {
        let url = format!("{}/graphql", base.replacen("http", "ws", 1));
        let mut req = url.into_client_request().unwrap();
        let name = match protocol {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::LegacyWs => "graphql-ws",
        };
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", name.parse().unwrap());
        // A small read buffer, as the server uses: tungstenite zero-fills the whole buffer on
        // every read, which at the default 128 KiB dominates a benchmark's 1000 subscribers.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024);
        let (mut ws, res) = tokio_tungstenite::connect_async_with_config(req, Some(config), false)
            .await
            .unwrap();
        assert_eq!(
            res.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(name)
        );
        ws.send(Message::text(
            json!({"type": "connection_init", "payload": init_payload}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .map_err(|_| "no connection_ack in time".to_string())?
                .ok_or("connection closed")?
                .map_err(|e| e.to_string())?;
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str() {
                        Some("connection_ack") => break,
                        Some("connection_error") => return Err(format!("{v}")),
                        _ => {}
                    }
                }
                Message::Close(frame) => return Err(format!("closed: {frame:?}")),
                _ => {}
            }
        }
        let start = match protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        };
        ws.send(Message::text(
            json!({"id": "1", "type": start, "payload": {"query": query, "variables": variables}})
                .to_string(),
        ))
        .await
        .unwrap();
        Ok(Self { ws, protocol })
    }

    /// The next `data`; `Err` with the server's error message (or why the stream ended).
    pub async fn next_result(&mut self, timeout: Duration) -> Result<Value, String> {
        match self.next_event(timeout).await {
            Event::Data(v) => Ok(v),
            Event::Error(v) => Err(format!("{v}")),
            Event::End(why) => Err(why),
        }
    }

    /// The next `data` of the subscription, or `None` on timeout or end; a server error
    /// fails the test.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Option<Value> {
        match self.next_event(timeout).await {
            Event::Data(v) => Some(v),
            Event::Error(v) => panic!("subscription error: {v:#}"),
            Event::End(_) => None,
        }
    }

    /// Reads messages (answering pings) until data, an error or the end of the stream.
    async fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Event::End("timed out".into()),
                Ok(None) => return Event::End("connection closed".into()),
                Ok(Some(Err(e))) => return Event::End(e.to_string()),
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str() {
                        Some("next" | "data") if v["payload"]["errors"].is_null() => {
                            return Event::Data(v["payload"]["data"].clone())
                        }
                        Some("next" | "data" | "error") => return Event::Error(v),
                        Some("complete") => return Event::End("completed".into()),
                        Some("ping") => {
                            let _ = self
                                .ws
                                .send(Message::text(json!({"type": "pong"}).to_string()))
                                .await;
                        }
                        _ => {}
                    }
                }
                Message::Close(frame) => return Event::End(format!("closed: {frame:?}")),
                _ => {}
            }
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}
