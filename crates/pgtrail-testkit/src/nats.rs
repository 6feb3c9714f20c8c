//! A real NATS JetStream cluster on loopback: `nats-server` processes (Debian's, installed by
//! scripts/setup.sh), each with its own store directory, routed to each other. Nodes can be
//! killed (SIGKILL), stopped and started again with their stores.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// One server of the cluster.
#[derive(Debug)]
struct Node {
    name: String,
    config: PathBuf,
    log: PathBuf,
    client_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// A JetStream cluster of `nats-server` processes; every process is killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    pub dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `size` routed servers (3 for replicated streams) and waits until JetStream
    /// is ready on each of them.
    pub fn start(size: usize) -> NatsCluster {
        let dir = tempfile::Builder::new().prefix("pgtrail-nats-").tempdir().expect("temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..size).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, route, _)| format!("nats-route://127.0.0.1:{route}")).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, route_port, monitor_port))| {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{monitor_port}\n\
                         jetstream {{ store_dir: \"{}\" }}\n\
                         cluster {{ name: pgtrail, listen: 127.0.0.1:{route_port}, routes: [{}] }}\n",
                        store.display(),
                        routes.join(", ")
                    ),
                )
                .expect("write nats config");
                let log = dir.path().join(format!("{name}.log"));
                Node { name, config, log, client_port, monitor_port, child: None }
            })
            .collect();
        let mut cluster = NatsCluster { dir, nodes };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster.wait_meta_peers();
        cluster
    }

    /// Waits until the meta group's leader sees every other server as a current peer: only
    /// then can a stream with as many replicas as servers be placed.
    fn wait_meta_peers(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let peers_current = |node: &Node| {
            let body = http_get(node.monitor_port, "/jsz")?;
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            let replicas = jsz["meta_cluster"]["replicas"].as_array()?;
            let current = replicas.iter().filter(|r| r["current"] == true).count();
            Some(current + 1 >= self.nodes.len())
        };
        while !self.nodes.iter().any(|node| peers_current(node) == Some(true)) {
            assert!(Instant::now() < deadline, "the meta group does not see all {} servers in 60 s", self.nodes.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URLs of every server, comma-separated (what `--nats` takes).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of one server.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Kills server `i` with SIGKILL (no shutdown of any kind).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its ports and store, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Starts every stopped server again and waits until all are healthy.
    pub fn restart_all(&mut self) {
        let stopped: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_none()).collect();
        for &i in &stopped {
            self.spawn(i);
        }
        for i in 0..self.nodes.len() {
            self.wait_healthy(i);
        }
    }

    /// The server's log (for a failing test's message).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} runs already", node.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("nats log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs Debian's nats-server)");
        node.child = Some(child);
    }

    /// Waits until the server's monitor says JetStream is healthy (`/healthz`: its streams
    /// are current) and knows the meta group's leader (`/jsz`).
    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log(i);
            let node = &mut self.nodes[i];
            if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({status}):\n{}", node.name, std::fs::read_to_string(&node.log).unwrap_or_default());
            }
            let healthy = http_get(node.monitor_port, "/healthz").is_some_and(|body| body.contains("\"ok\""));
            // And the meta group has a leader this server knows (streams can be created).
            let led = || http_get(node.monitor_port, "/jsz").is_some_and(|body| body.contains("\"leader\""));
            if healthy && led() {
                return;
            }
            assert!(Instant::now() < deadline, "{} not healthy in 60 s:\n{log}", node.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The body of a plain HTTP GET on loopback, or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}
