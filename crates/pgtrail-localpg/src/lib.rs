//! Throwaway PostgreSQL clusters from the installed server binaries.
//!
//! Owns: finding the server binaries, initdb, starting, waiting for readiness and removing
//! a cluster. Must not: know anything about pgtrail's proxy or journal.
//!
//! Used by `pgtrail quickstart` and by the test harness. A cluster lives in a temporary
//! directory, listens on 127.0.0.1 on a free port and on a Unix socket in that directory,
//! and is stopped and deleted when dropped. PostgreSQL refuses to run as root, so when we
//! are root the server runs as the `postgres` user (or `nobody`), which is given the
//! directory.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting or using a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb on PATH, via pg_config, and under /usr/lib/postgresql/*/bin). Install them, e.g. `apt-get install postgresql-15` on Debian or Ubuntu"
    )]
    NotInstalled,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("I/O in {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL did not become ready within {0:?}; its log:\n{1}")]
    NotReady(Duration, String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalPgError + '_ {
    move |source| LocalPgError::Io { path: path.to_path_buf(), source }
}

/// The directory holding `initdb`, `postgres`, `pg_ctl`, `psql`, ...
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Finds server binaries: `PGTRAIL_PG_BINDIR`, then PATH, then `pg_config --bindir`,
    /// then the newest `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<Self, LocalPgError> {
        let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
        if let Some(dir) = std::env::var_os("PGTRAIL_PG_BINDIR").map(PathBuf::from)
            && has_server(&dir)
        {
            return Ok(Self { bindir: dir });
        }
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versioned.sort();
        candidates.extend(versioned.into_iter().rev().map(|(_, p)| p));
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        candidates
            .into_iter()
            .find(|dir| has_server(dir))
            .map(|bindir| Self { bindir })
            .ok_or(LocalPgError::NotInstalled)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// How clients on 127.0.0.1 must authenticate (pg_hba.conf method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAuth {
    Trust,
    Password,
    Md5,
    ScramSha256,
    /// TLS client certificates only (`hostssl ... cert`).
    Cert,
}

impl HostAuth {
    fn hba_method(self) -> &'static str {
        match self {
            Self::Trust => "trust",
            Self::Password => "password",
            Self::Md5 => "md5",
            Self::ScramSha256 => "scram-sha-256",
            Self::Cert => "cert",
        }
    }
}

/// Options for a throwaway cluster.
#[derive(Debug, Clone)]
pub struct LocalPgOptions {
    pub auth: HostAuth,
    /// Password of the `postgres` superuser (used when `auth` is not trust).
    pub superuser_password: String,
    /// Extra `postgresql.conf` lines.
    pub settings: Vec<String>,
    /// Server certificate and key in PEM, to enable TLS.
    pub tls: Option<(String, String)>,
    /// CA certificate in PEM for client certificates (`ssl_ca_file`).
    pub client_ca: Option<String>,
}

impl Default for LocalPgOptions {
    fn default() -> Self {
        Self {
            auth: HostAuth::Trust,
            superuser_password: "postgres".into(),
            settings: Vec::new(),
            tls: None,
            client_ca: None,
        }
    }
}

/// A running throwaway cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct LocalPg {
    binaries: PgBinaries,
    dir: tempfile::TempDir,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The uid and gid to run PostgreSQL as, when we are root.
fn unprivileged_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // We are root if we own a directory only root can create files in.
    let am_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if !am_root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))?
        })
    };
    find("postgres").or_else(|| find("nobody")).or(Some((65534, 65534)))
}

fn free_port() -> Result<u16, LocalPgError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err(Path::new("127.0.0.1:0")))?;
    let port = listener.local_addr().map_err(io_err(Path::new("127.0.0.1:0")))?.port();
    Ok(port)
}

impl LocalPg {
    /// initdb, configure, start and wait until ready.
    pub fn start(options: &LocalPgOptions) -> Result<Self, LocalPgError> {
        let binaries = PgBinaries::find()?;
        let dir = tempfile::Builder::new().prefix("pgtrail-pg-").tempdir().map_err(io_err(Path::new("/tmp")))?;
        let run_as = unprivileged_user();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(io_err(dir.path()))?;
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir.path()))?;
        let mut pg = Self { binaries, dir, port: 0, run_as, child: None };
        pg.initdb(options)?;
        pg.configure(options)?;
        let mut last_error = None;
        for _ in 0..3 {
            pg.port = free_port()?;
            match pg.launch() {
                Ok(()) => return Ok(pg),
                // Another process may have taken the port between our probe and the bind.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.binaries.bin(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("LC_ALL", "C").env_remove("PGDATA").current_dir(self.dir.path());
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `log_directory = 'log'` (relative to the data directory), where the logging
    /// collector writes when it is on.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir().join("log")
    }

    /// The directory of the Unix socket (and of the server's log).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<String, LocalPgError> {
        let out = cmd.output().map_err(|e| LocalPgError::Command { what: what.into(), detail: e.to_string() })?;
        if !out.status.success() {
            return Err(LocalPgError::Command {
                what: what.into(),
                detail: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn initdb(&self, options: &LocalPgOptions) -> Result<(), LocalPgError> {
        let pwfile = self.dir.path().join("pwfile");
        self.write_owned(&pwfile, &options.superuser_password, 0o600)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(self.data_dir()).args(["-U", "postgres", "--no-sync", "-E", "UTF8", "--auth-local=trust"]);
        cmd.arg(format!("--pwfile={}", pwfile.display()));
        self.run(cmd, "initdb")?;
        Ok(())
    }

    /// Writes a file owned by the server's user.
    fn write_owned(&self, path: &Path, content: &str, mode: u32) -> Result<(), LocalPgError> {
        std::fs::write(path, content).map_err(io_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err(path))?;
        }
        Ok(())
    }

    fn configure(&self, options: &LocalPgOptions) -> Result<(), LocalPgError> {
        let data = self.data_dir();
        let mut conf = String::new();
        let _ = writeln!(conf, "listen_addresses = '127.0.0.1'");
        let _ = writeln!(conf, "unix_socket_directories = '{}'", self.dir.path().display());
        let _ = writeln!(conf, "fsync = off\nsynchronous_commit = off\nfull_page_writes = off");
        let _ = writeln!(conf, "max_connections = 300\nshared_buffers = 64MB");
        if options.auth == HostAuth::Md5 {
            let _ = writeln!(conf, "password_encryption = md5");
        }
        if let Some((cert, key)) = &options.tls {
            self.write_owned(&data.join("server.crt"), cert, 0o600)?;
            self.write_owned(&data.join("server.key"), key, 0o600)?;
            let _ = writeln!(conf, "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'");
        }
        if let Some(ca) = &options.client_ca {
            self.write_owned(&data.join("client_ca.crt"), ca, 0o600)?;
            let _ = writeln!(conf, "ssl_ca_file = 'client_ca.crt'");
        }
        for line in &options.settings {
            let _ = writeln!(conf, "{line}");
        }
        let conf_path = data.join("postgresql.auto.conf");
        let existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        self.write_owned(&conf_path, &format!("{existing}{conf}"), 0o600)?;
        let host_line = match options.auth {
            HostAuth::Cert => "hostssl all all 127.0.0.1/32 cert".to_owned(),
            other => format!("host all all 127.0.0.1/32 {}", other.hba_method()),
        };
        let hba = format!("local all all trust\n{host_line}\n");
        self.write_owned(&data.join("pg_hba.conf"), &hba, 0o600)
    }

    fn launch(&mut self) -> Result<(), LocalPgError> {
        let log_path = self.dir.path().join("postgres.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err(&log_path))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).map_err(io_err(&log_path))?;
        }
        let err = log.try_clone().map_err(io_err(&log_path))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(self.data_dir()).arg("-p").arg(self.port.to_string());
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        // Its own process group, so a Ctrl-C meant for pgtrail does not hit the server first.
        cmd.process_group(0);
        let child =
            cmd.spawn().map_err(|e| LocalPgError::Command { what: "postgres".into(), detail: e.to_string() })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(LocalPgError::Command {
                    what: "postgres".into(),
                    detail: format!("exited with {status}:\n{}", self.log()),
                });
            }
            let mut ready = Command::new(self.binaries.bin("pg_isready"));
            ready.args(["-q", "-h", self.host(), "-p", &self.port.to_string()]);
            if ready.status().map(|s| s.success()).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LocalPgError::NotReady(Duration::from_secs(30), self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQL as the superuser over the Unix socket (never through the proxy).
    pub fn psql(&self, sql: &str) -> Result<String, LocalPgError> {
        let mut cmd = Command::new(self.binaries.bin("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres"]);
        cmd.arg("-h").arg(self.dir.path()).arg("-p").arg(self.port.to_string()).arg("-c").arg(sql);
        cmd.env_remove("PGPASSWORD").env_remove("PGHOST").env_remove("PGPORT");
        self.run(cmd, "psql")
    }

    /// Stops the server (fast shutdown). Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "-t", "20"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        if !cmd.status().map(|s| s.success()).unwrap_or(false) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        self.stop();
    }
}
