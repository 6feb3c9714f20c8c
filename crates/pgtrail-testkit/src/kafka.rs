//! A real Kafka-protocol broker on loopback: Tansu (crates.io's `tansu`, built with its
//! SQLite storage and installed by scripts/setup.sh), one process with its store in a temp
//! directory. It can be killed (SIGKILL) and started again with its store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A Tansu broker; the process is killed on drop.
#[derive(Debug)]
pub struct KafkaBroker {
    pub dir: tempfile::TempDir,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Starts a broker with an empty store and waits until it answers.
    pub fn start() -> KafkaBroker {
        let dir = tempfile::Builder::new().prefix("pgtrail-kafka-").tempdir().expect("temp dir");
        let log = dir.path().join("broker.log");
        let mut broker = KafkaBroker { dir, port: free_port(), log, child: None };
        broker.restart();
        broker
    }

    /// What `--kafka` and `brokers =` take.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker with SIGKILL (no shutdown of any kind).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on its port and store, and waits until it accepts.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker runs already");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("broker log");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new("tansu")
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            // The store: a SQLite database in the broker's directory (the path is relative).
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu runs (scripts/setup.sh installs it from crates.io)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tansu exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "tansu does not accept in 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's log (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
