//! A real NATS cluster on loopback: `n` nats-server processes joined by `cluster {
//! routes }`, JetStream on in each (its store in a temp dir that survives restarts).
//! Nodes can be killed (SIGKILL) and started again; everything stops on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_for_port};

/// One node.
struct Node {
    name: String,
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

/// `n` nats-servers forming one cluster.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes named `n0`, `n1`, … and waits (bounded) until JetStream has a
    /// metadata leader, so streams can be created.
    pub async fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{i}");
            let port = free_port();
            let store = dir.path().join(format!("store-{name}"));
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{\n  name: testcluster\n  listen: 127.0.0.1:{route_port}\n  routes: [ {} ]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            nodes.push(Node { name, port, conf, child: None });
        }
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            wait_for_port(cluster.nodes[i].port, true);
        }
        cluster.wait_for_jetstream(Duration::from_secs(30)).await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.nodes[i].conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (Debian package nats-server)");
        self.nodes[i].child = Some(child);
    }

    /// Waits until every running node answers JetStream API requests and the cluster can
    /// place a stream on all of them.
    pub async fn wait_for_jetstream(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let client = async_nats::connect(format!("nats://127.0.0.1:{}", node.port)).await.expect("connects");
            loop {
                let answer =
                    tokio::time::timeout(Duration::from_secs(1), client.request("$JS.API.INFO", "".into())).await;
                if let Ok(Ok(msg)) = answer {
                    if !String::from_utf8_lossy(&msg.payload).contains("\"error\"") {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "JetStream on {} did not become ready within {within:?}", node.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Answering is not enough: the metadata leader must know every running node as a
        // peer before it can place a stream with that many replicas.
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        let js = async_nats::jetstream::new(self.client().await);
        let probe = async_nats::jetstream::stream::Config {
            name: "TESTKIT_PLACEMENT".into(),
            subjects: vec!["testkit.placement".into()],
            num_replicas: running,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        loop {
            let made = tokio::time::timeout(Duration::from_secs(2), js.create_stream(probe.clone())).await;
            if let Ok(Ok(_)) = made {
                let _ = js.delete_stream("TESTKIT_PLACEMENT").await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster could not place an R{running} stream within {within:?}: {made:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Node `i`'s name (`server_name`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// A client that knows every node (and so survives the loss of any).
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<String> = (0..self.nodes.len()).map(|i| self.url(i)).collect();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&urls[..])
            .await
            .expect("test client connects")
    }

    /// A client of node `i` alone (so it sees exactly what that node does while others
    /// die).
    pub async fn client_at(&self, i: usize) -> async_nats::Client {
        async_nats::connect(self.url(i)).await.expect("test client connects")
    }

    /// Kills node `i` (SIGKILL: no goodbye to its routes or clients).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_for_port(self.nodes[i].port, false);
    }

    /// Starts node `i` again, with its store, on its ports.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        wait_for_port(self.nodes[i].port, true);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
