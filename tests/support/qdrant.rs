//! Real Qdrant servers for tests: one node, or a cluster on loopback ports, started from
//! the binary that `TRAUM_TEST_QDRANT_BIN` names (or a running server at
//! `TRAUM_TEST_QDRANT_URL`, for single-node tests). Qdrant is on none of the package
//! registries; the README says how to get or build a binary. Tests without either print
//! that they were skipped, and why.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN_VAR: &str = "TRAUM_TEST_QDRANT_BIN";
pub const URL_VAR: &str = "TRAUM_TEST_QDRANT_URL";

/// How long a node may take to start (or a cluster to agree) before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The Qdrant binary to start, or `None` after printing why the test is skipped.
pub fn binary(test: &str) -> Option<PathBuf> {
    match std::env::var_os(BIN_VAR) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            eprintln!(
                "SKIPPED {test}: needs a Qdrant server binary; set {BIN_VAR}=/path/to/qdrant \
                 (v1.18.x; see README.md, \"Qdrant for tests\")"
            );
            None
        }
    }
}

/// Where a single-node test finds Qdrant: a running server (`TRAUM_TEST_QDRANT_URL`, gRPC
/// URL) or a node started from `TRAUM_TEST_QDRANT_BIN`. `None` after printing why the test
/// is skipped.
pub enum Single {
    External(String),
    Started(QdrantNode),
}

impl Single {
    pub fn get(test: &str) -> Option<Self> {
        if let Some(url) = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty()) {
            return Some(Single::External(url));
        }
        if std::env::var_os(BIN_VAR).is_none_or(|p| p.is_empty()) {
            eprintln!(
                "SKIPPED {test}: needs Qdrant; set {URL_VAR}=http://host:6334 (a running \
                 server) or {BIN_VAR}=/path/to/qdrant (v1.18.x; see README.md)"
            );
            return None;
        }
        Some(Single::Started(QdrantNode::start_single(&binary(test)?)))
    }

    pub fn grpc_url(&self) -> String {
        match self {
            Single::External(url) => url.clone(),
            Single::Started(node) => node.grpc_url(),
        }
    }
}

/// One `qdrant` process with its own storage and ports; killed when dropped.
pub struct QdrantNode {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub http_port: u16,
    pub grpc_port: u16,
    pub p2p_port: u16,
    /// `--uri`/`--bootstrap` arguments (cluster nodes).
    args: Vec<String>,
    cluster: bool,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl QdrantNode {
    /// A single node (no cluster), ready to serve.
    pub fn start_single(bin: &Path) -> Self {
        Self::start_single_with(bin, &[])
    }

    /// A single node with extra `QDRANT__…` settings (e.g. an API key).
    pub fn start_single_with(bin: &Path, env: &[(&str, &str)]) -> Self {
        let mut node = Self::new(bin, false, Vec::new());
        node.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node.spawn();
        node.wait_ready();
        node
    }

    /// `n` nodes forming one cluster: the first bootstraps it, the others join; returns
    /// once every node is ready and the cluster lists all `n` peers.
    pub fn start_cluster(bin: &Path, n: usize) -> Vec<Self> {
        let first = Self::new(bin, true, Vec::new());
        let bootstrap = format!("http://127.0.0.1:{}", first.p2p_port);
        let mut nodes = vec![first];
        nodes[0].args = vec!["--uri".into(), bootstrap.clone()];
        nodes[0].spawn();
        nodes[0].wait_ready();
        for _ in 1..n {
            let mut node = Self::new(bin, true, Vec::new());
            node.args = vec![
                "--bootstrap".into(),
                bootstrap.clone(),
                "--uri".into(),
                format!("http://127.0.0.1:{}", node.p2p_port),
            ];
            node.spawn();
            node.wait_ready();
            nodes.push(node);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let peers = nodes[0]
                .get_json("/cluster")
                .and_then(|v| v["result"]["peers"].as_object().map(|p| p.len()));
            if peers == Some(n) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Qdrant cluster did not reach {n} peers (last: {peers:?}); logs in {}",
                nodes[0].dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        nodes
    }

    fn new(bin: &Path, cluster: bool, args: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("traum-qdrant-")
            .tempdir()
            .unwrap();
        Self {
            bin: bin.to_owned(),
            dir,
            http_port: free_port(),
            grpc_port: free_port(),
            p2p_port: free_port(),
            args,
            cluster,
            env: Vec::new(),
            child: None,
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("qdrant.log"))
            .unwrap();
        let storage = self.dir.path().join("storage");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .current_dir(self.dir.path())
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__STORAGE__STORAGE_PATH", &storage)
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.path().join("snapshots"),
            )
            .env("QDRANT__CLUSTER__ENABLED", self.cluster.to_string())
            .env("QDRANT__CLUSTER__P2P__PORT", self.p2p_port.to_string())
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200 (the node serves, and in a cluster has caught up
    /// with consensus).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "qdrant exited ({status}) while starting:\n{}",
                        self.log_tail()
                    );
                }
            }
            if http_get(self.http_port, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "qdrant did not become ready in {START_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9`: the process dies at once, its storage stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed node again on the same storage and ports, and waits until ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a node that was killed");
        if self.cluster {
            // A restarted peer rejoins from its stored state; bootstrapping again is not
            // needed (and would be refused).
            if let Some(i) = self.args.iter().position(|a| a == "--bootstrap") {
                self.args.drain(i..i + 2);
            }
        }
        self.spawn();
        self.wait_ready();
    }

    /// `GET path` on the node's REST port, parsed as JSON.
    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let (code, body) = http_get(self.http_port, path)?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("qdrant.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for QdrantNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on now (the OS's next ephemeral port).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET on loopback: the status code and body, `None` if nothing answered.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
