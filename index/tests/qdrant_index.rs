//! `QdrantIndex` against real Qdrant servers: the conformance suite on one node (with and
//! without int8 quantization) and on a 3-node cluster with replication 2, then what only a
//! server backend has (node failover, API keys, collections it must refuse, a node dying
//! mid-ingest). Needs `TRAUM_TEST_QDRANT_BIN` (or `TRAUM_TEST_QDRANT_URL` for the
//! single-node tests); without them each test prints that it was skipped.

mod conformance;
#[path = "../../tests/support/qdrant.rs"]
mod qdrant_server;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use conformance::*;
use qdrant_server::{QdrantNode, Single};
use traum_index::{
    IndexCounts, IndexError, QdrantConfig, QdrantIndex, SearchParams, Uuid, VectorIndex,
};

/// A Qdrant deployment: new collections (a prefix of their own) per case.
struct Server {
    urls: Vec<String>,
    configure: fn(&mut QdrantConfig),
    /// Distinguishes this run's collections on a server that outlives it.
    run: String,
}

impl Server {
    fn new(urls: Vec<String>, configure: fn(&mut QdrantConfig)) -> Arc<Self> {
        Arc::new(Self {
            urls,
            configure,
            run: Uuid::new_v4().simple().to_string()[..8].to_owned(),
        })
    }

    fn config(&self, name: &str) -> QdrantConfig {
        let mut config = QdrantConfig::new(self.urls.clone(), "test/tiny-clap", DIM);
        config.collection_prefix = format!("t{}_{name}_", self.run);
        (self.configure)(&mut config);
        config
    }
}

impl Backend for Server {
    fn fresh(&self, case: &'static str) -> FreshFuture<'_> {
        Box::pin(async move {
            let index = QdrantIndex::connect(self.config(case)).await.unwrap();
            Fresh {
                index: Arc::new(index),
                keep: None,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_a_qdrant_node() {
    let Some(qdrant) = Single::get("conformance_suite_on_a_qdrant_node") else {
        return;
    };
    run_all(Server::new(vec![qdrant.grpc_url()], |_| {})).await;
    // The same with int8 quantization (scores are rescored with the original vectors).
    run_all(Server::new(vec![qdrant.grpc_url()], |c| c.int8 = true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_a_3_node_cluster() {
    let Some(bin) = qdrant_server::binary("conformance_suite_on_a_3_node_cluster") else {
        return;
    };
    let nodes = QdrantNode::start_cluster(&bin, 3);
    let urls = nodes.iter().map(QdrantNode::grpc_url).collect();
    run_all(Server::new(urls, |c| {
        c.shard_number = 3;
        c.replication_factor = 2;
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_node_is_skipped_for_the_next() {
    let Some(qdrant) = Single::get("a_refusing_node_is_skipped_for_the_next") else {
        return;
    };
    // Nothing listens on the first URL.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let server = Server::new(vec![dead.clone(), qdrant.grpc_url()], |_| {});
    let index = QdrantIndex::connect(server.config("failover"))
        .await
        .unwrap();
    four_files(&index).await;
    assert_eq!(
        ids(&index
            .search(&axis(0), SearchParams::with_limit(1))
            .await
            .unwrap()),
        vec![0xA]
    );
    let status = index.status().await.unwrap();
    assert_eq!(
        status.nodes.iter().map(|n| n.reachable).collect::<Vec<_>>(),
        vec![false, true],
        "{status:?}"
    );

    // With no node answering, the error says so and names the nodes.
    let mut config = server.config("nobody");
    config.urls = vec![dead.clone()];
    config.connect_timeout = std::time::Duration::from_secs(1);
    let err = QdrantIndex::connect(config).await.unwrap_err();
    assert!(matches!(err, IndexError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&dead), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_for_another_model_size_is_refused() {
    let Some(qdrant) = Single::get("a_collection_for_another_model_size_is_refused") else {
        return;
    };
    let server = Server::new(vec![qdrant.grpc_url()], |_| {});
    let index = QdrantIndex::connect(server.config("dims")).await.unwrap();
    four_files(&index).await;
    let mut bigger = server.config("dims");
    bigger.dim = 512;
    let err = QdrantIndex::connect(bigger).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, IndexError::Collection { .. }), "{err:?}");
    assert!(
        message.contains("holds 24-d vectors but the model `test/tiny-clap` produces 512-d")
            && message.contains("--qdrant-collection-prefix"),
        "{message}"
    );
    // Collection names keep only the characters Qdrant allows.
    assert_eq!(
        server.config("dims").collection("windows"),
        format!("t{}_dims_test_tiny-clap_windows", server.run)
    );
    // The first index still works: nothing was changed.
    assert_eq!(index.count().await.unwrap().files, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_sent_and_never_printed() {
    let Some(bin) = qdrant_server::binary("api_key_is_sent_and_never_printed") else {
        return;
    };
    let key = "traum-test-secret-4f1c";
    let node = QdrantNode::start_single_with(&bin, &[("QDRANT__SERVICE__API_KEY", key)]);
    let server = Server::new(vec![node.grpc_url()], |_| {});

    let err = QdrantIndex::connect(server.config("nokey"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("api key")
            || err.to_string().contains("Unauthenticated")
            || err.to_string().contains("PermissionDenied"),
        "{err}"
    );

    let mut config = server.config("key");
    config.api_key = Some(key.into());
    assert!(!format!("{config:?}").contains(key));
    let index = QdrantIndex::connect(config).await.unwrap();
    four_files(&index).await;
    assert!(!format!("{index:?}").contains(key));
    assert_eq!(index.count().await.unwrap().files, 4);
}

/// Every replica of both collections is active (after a node came back).
fn replicas_active(node: &QdrantNode, collections: &[String]) -> bool {
    collections.iter().all(|c| {
        let Some(info) = node.get_json(&format!("/collections/{c}/cluster")) else {
            return false;
        };
        let result = &info["result"];
        let states = result["local_shards"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(result["remote_shards"].as_array().into_iter().flatten())
            .map(|s| s["state"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>();
        !states.is_empty() && states.iter().all(|s| s == "Active")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_killed_mid_ingest_loses_nothing() {
    let Some(bin) = qdrant_server::binary("a_cluster_node_killed_mid_ingest_loses_nothing") else {
        return;
    };
    let mut nodes = QdrantNode::start_cluster(&bin, 3);
    let urls: Vec<String> = nodes.iter().map(QdrantNode::grpc_url).collect();
    let server = Server::new(urls.clone(), |c| {
        c.shard_number = 3;
        c.replication_factor = 2;
        c.timeout = std::time::Duration::from_secs(10);
    });
    let config = server.config("kill");
    let collections = [config.collection("windows"), config.collection("files")];
    let index: Arc<dyn VectorIndex> = Arc::new(QdrantIndex::connect(config).await.unwrap());
    index.upsert_file(file(0, vec![axis(0); 2])).await.unwrap();

    const FILES: u128 = 120;
    let written = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ingest = {
        let index = Arc::clone(&index);
        let written = Arc::clone(&written);
        tokio::spawn(async move {
            for i in 1..FILES {
                let k = 1 + i as usize % 20;
                index
                    .upsert_file(file(i, vec![axis(k), axis(k), axis(23)]))
                    .await
                    .unwrap();
                written.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Searches throughout: each must answer, and file 0 is always the best for axis 0.
    let searches = {
        let index = Arc::clone(&index);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                let hits = index
                    .search(&axis(0), SearchParams::with_limit(1))
                    .await
                    .unwrap();
                assert_eq!(ids(&hits), vec![0]);
                n += 1;
            }
            n
        })
    };
    // Kill the node the client talks to first, once a third of the files are in.
    while written.load(Ordering::SeqCst) < FILES as usize / 3 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    nodes[0].kill();
    ingest.await.unwrap();
    done.store(true, Ordering::SeqCst);
    let searched = searches.await.unwrap();
    assert!(searched > 0);
    let expected = IndexCounts {
        files: FILES as u64,
        windows: 2 + 3 * (FILES as u64 - 1),
    };
    assert_eq!(index.count().await.unwrap(), expected);

    // The node comes back, catches up, and every node counts the same.
    nodes[0].restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !nodes.iter().all(|n| replicas_active(n, &collections)) {
        assert!(
            std::time::Instant::now() < deadline,
            "replicas did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for url in &urls {
        let mut config = server.config("kill");
        config.urls = vec![url.clone()];
        let single = QdrantIndex::connect(config).await.unwrap();
        assert_eq!(
            single.count().await.unwrap(),
            expected,
            "counted through {url}"
        );
    }
    eprintln!("a_cluster_node_killed_mid_ingest_loses_nothing: {searched} searches during ingest");
}
