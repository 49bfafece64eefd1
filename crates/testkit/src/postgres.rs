//! A real PostgreSQL of the pinned release (nix/pins.json) started from the lab's own
//! postgresql.conf, pg_hba.conf and init.sql.
//!
//! The server's and the backend's certificates come from a test CA shaped like SPIRE's
//! (see `svid::test_ca`); SPIRE-issued SVIDs are covered by the local runtime.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use crate::manifests;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use svid::test_ca::{Leaf, TestCa};

/// The backend's and PostgreSQL's SPIFFE IDs (from `contract`, where they are defined).
pub static BACKEND_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| contract::Workload::Backend.spiffe_id());
pub static POSTGRES_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| contract::Workload::Postgres.spiffe_id());

/// The pinned PostgreSQL server's binaries and a psql, or a panic that says how to install them.
pub fn pg_bins() -> (PathBuf, PathBuf) {
    let pg = pins::Pins::of_this_repository()
        .unwrap_or_else(|e| panic!("{e}"))
        .postgres;
    let how =
        "install them with `cargo xtask deps`, or point LAB_PG_BIN at the directory holding them";
    let server = pg.server_bin().unwrap_or_else(|| {
        panic!(
            "PostgreSQL {} server binaries (postgres, initdb, pg_ctl) not found: {how}",
            pg.version
        )
    });
    let psql = pg.psql().unwrap_or_else(|| {
        panic!("no psql found: {how} (Debian: apt-get install postgresql-client)")
    });
    (server, psql)
}

/// The operating-system user PostgreSQL runs as: `postgres` when the tests run as root
/// (PostgreSQL refuses to run as root), else the current user.
fn pg_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the `postgres` user (created by the postgresql package)");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

pub struct Postgres {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    psql_bin: PathBuf,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// initdb, the lab's postgresql.conf and pg_hba.conf, the server SVID `server`, init.sql.
    pub fn start(ca: &TestCa, server: &Leaf) -> Postgres {
        let (bindir, psql_bin) = pg_bins();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let user = pg_user();
        for sub in ["certs", "run", "config", "data"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        std::fs::set_permissions(root.join("data"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        for file in ["postgresql.conf", "pg_hba.conf", "init.sql"] {
            std::fs::copy(
                manifests().join("postgres/config").join(file),
                root.join("config").join(file),
            )
            .unwrap();
        }
        let mut pg = Postgres {
            _dir: dir,
            root,
            port: free_port(),
            bindir,
            psql_bin,
            user,
            child: None,
        };
        pg.write_server_svid(ca, server);
        pg.chown_tree();
        pg.run(
            Command::new(pg.bindir.join("initdb"))
                .arg("-D")
                .arg(pg.root.join("data"))
                .args(["--no-sync", "-E", "UTF8", "--locale=C", "--auth=peer"]),
        );
        pg.launch();
        pg.psql("postgres", "CREATE DATABASE demo");
        let init = pg.root.join("config/init.sql");
        pg.run(
            Command::new(&pg.psql_bin)
                .args(pg.socket_args())
                .args(["-d", "demo", "-v", "ON_ERROR_STOP=1", "-q", "-f"])
                .arg(init),
        );
        pg
    }

    pub fn write_server_svid(&self, ca: &TestCa, server: &Leaf) {
        ca.write_svid(&self.root.join("certs"), server);
        self.chown_tree();
    }

    fn chown_tree(&self) {
        if let Some((uid, gid)) = self.user {
            for sub in ["certs", "run", "config", "data"] {
                let p = self.root.join(sub);
                if !p.exists() {
                    continue;
                }
                chown(&p, Some(uid), Some(gid)).unwrap();
                for e in std::fs::read_dir(&p).unwrap() {
                    chown(e.unwrap().path(), Some(uid), Some(gid)).unwrap();
                }
            }
        }
    }

    fn socket_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.root.join("run").display().to_string(),
            "-p".into(),
            self.port.to_string(),
        ]
    }

    fn as_pg_user<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, cmd: &mut Command) -> String {
        let out = self.as_pg_user(cmd).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned rows.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.run(Command::new(&self.psql_bin).args(self.socket_args()).args([
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-AtX",
            "-c",
            sql,
        ]))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }

    /// Starts the server and waits until it accepts connections.
    pub fn launch(&mut self) {
        let r = |p: &str| self.root.join(p).display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("postgres.log"))
            .unwrap();
        if let Some((uid, gid)) = self.user {
            chown(self.root.join("postgres.log"), Some(uid), Some(gid)).unwrap();
        }
        let overrides = [
            ("config_file", r("config/postgresql.conf")),
            ("hba_file", r("config/pg_hba.conf")),
            ("listen_addresses", "127.0.0.1".into()),
            ("port", self.port.to_string()),
            ("unix_socket_directories", r("run")),
            ("external_pid_file", r("run/postgres.pid")),
            ("ssl_cert_file", r("certs/svid.pem")),
            ("ssl_key_file", r("certs/svid_key.pem")),
            ("ssl_ca_file", r("certs/svid_bundle.pem")),
        ];
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D").arg(self.root.join("data"));
        for (k, v) in overrides {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = self.as_pg_user(&mut cmd).spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self
                .as_pg_user(
                    Command::new(&self.psql_bin)
                        .args(self.socket_args())
                        .args(["-d", "postgres", "-AtXc", "SELECT 1"]),
                )
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (SIGINT), and wait for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            child.wait().unwrap();
        }
    }

    /// Tells the server to reload its configuration and certificates (SIGHUP).
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
