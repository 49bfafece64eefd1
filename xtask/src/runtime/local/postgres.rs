//! The local runtime's two PostgreSQL servers — the demo's database and the SPIRE servers'
//! datastore: the user they run as, init-db.sh for a new data directory, the datastore's
//! password and certificate, and psql as the database superuser over the Unix socket.

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::pods::Pod;
use super::{LocalLab, Profile, chmod, chown};

/// The uid and gid PostgreSQL runs as: `postgres` when we are root (it refuses root), else ours.
pub(super) fn pg_user() -> anyhow::Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("running as root needs the `postgres` system user: run `cargo xtask deps`")?;
    let f: Vec<&str> = line.split(':').collect();
    Ok(Some((f[2].parse()?, f[3].parse()?)))
}

/// One of the two PostgreSQL servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Server {
    /// The demo's database (`demo`, from init.sql).
    Demo,
    /// The SPIRE servers' datastore (`spire`, from datastore-init.sql).
    Datastore,
}

impl Server {
    pub(super) fn database(self) -> &'static str {
        match self {
            Server::Demo => "demo",
            Server::Datastore => "spire",
        }
    }
}

impl LocalLab {
    pub(super) fn pg_data(&self, s: Server) -> PathBuf {
        match s {
            Server::Demo => self.layout().p("postgres/data"),
            Server::Datastore => self.layout().spire_db("data"),
        }
    }

    pub(super) fn pg_sockets(&self, s: Server) -> PathBuf {
        match s {
            Server::Demo => self.layout().pg_run(),
            Server::Datastore => self.layout().spire_db("run"),
        }
    }

    fn pg_port(&self, s: Server) -> u16 {
        match s {
            Server::Demo => self.ports().postgres,
            Server::Datastore => self.ports().spire_db,
        }
    }

    fn pg_command(&self, program: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let t = &self.state.tools;
        let path = match program {
            "psql" => t.psql.clone(),
            _ => t.pg_bin.join(program),
        };
        let mut cmd = std::process::Command::new(path);
        if let Some((uid, gid)) = self.state.pg_user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// psql as the database superuser over the Unix socket (peer authentication), with `input`
    /// (`-c SQL` or `-f FILE`); its unaligned output.
    pub(super) fn psql_run(
        &self,
        s: Server,
        db: &str,
        input: [&std::ffi::OsStr; 2],
    ) -> anyhow::Result<String> {
        let out = self
            .pg_command("psql")
            .arg("-h")
            .arg(self.pg_sockets(s))
            .args([
                "-p",
                &self.pg_port(s).to_string(),
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-AtXq",
            ])
            .args(input)
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// SQL as the database superuser.
    pub(super) fn psql(&self, s: Server, db: &str, sql: &str) -> anyhow::Result<String> {
        self.psql_run(s, db, ["-c".as_ref(), sql.as_ref()])
    }

    /// PATH for init-db.sh: the server's programs, then psql's directory.
    fn pg_path(&self) -> String {
        let t = &self.state.tools;
        let psql_dir = t.psql.parent().map(|d| d.display().to_string());
        [Some(t.pg_bin.display().to_string()), psql_dir]
            .into_iter()
            .flatten()
            .chain(["/usr/bin".into(), "/bin".into()])
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Starts init-db.sh (the script PostgreSQL's init container runs on kind) for a new data
    /// directory: initdb, the server's SQL through a socket-only server, stopped again. None
    /// when the data directory holds a database already; wait on the child with `finish_initdb`.
    pub(super) fn start_initdb(&self, s: Server) -> anyhow::Result<Option<std::process::Child>> {
        use std::os::unix::process::CommandExt;
        let data = self.pg_data(s);
        if data.join("PG_VERSION").exists() {
            return Ok(None);
        }
        let sql = match s {
            Server::Demo => "init.sql",
            Server::Datastore => "datastore-init.sql",
        };
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg(self.layout().config("init-db.sh"))
            .env("PGDATA", &data)
            .env("PG_INIT_SQL", self.layout().config(sql))
            .env("PG_INIT_DATABASE", s.database())
            .env("PG_INIT_SOCKETS", self.pg_sockets(s))
            .env("PATH", self.pg_path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if s == Server::Datastore {
            cmd.env("SPIRE_DB_PASSWORD", self.datastore_password()?);
        }
        if let Some((uid, gid)) = self.state.pg_user {
            cmd.uid(uid).gid(gid);
        }
        Ok(Some(cmd.spawn().context("start init-db.sh")?))
    }

    pub(super) fn initdb(&self, s: Server) -> anyhow::Result<()> {
        if let Some(child) = self.start_initdb(s)? {
            finish_initdb(child)?;
        }
        Ok(())
    }

    /// After the demo's PostgreSQL is ready: the benchmark's plaintext baseline logs in and
    /// reads without the identity checks (no client certificate, no SPIFFE ID).
    pub(super) fn init_database(&self) -> anyhow::Result<()> {
        if self.state.profile == Profile::Plaintext {
            self.psql(
                Server::Demo,
                "demo",
                "ALTER EVENT TRIGGER backend_login_needs_the_backend_spiffe_id DISABLE",
            )?;
            self.psql(
                Server::Demo,
                "demo",
                "ALTER TABLE orders DISABLE ROW LEVEL SECURITY",
            )?;
        }
        Ok(())
    }

    /// The datastore's password, from its 0600 file.
    pub(super) fn datastore_password(&self) -> anyhow::Result<String> {
        let path = self.layout().datastore_client().join("password");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("read {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// The datastore's password (0600, the lab's user) and certificate (its key 0600, the
    /// postgres user's), and the CA the servers check it with: made once per state directory.
    pub(super) fn datastore_credentials(&self) -> anyhow::Result<()> {
        let l = self.layout();
        let client = l.datastore_client();
        if client.join("password").exists() {
            return Ok(());
        }
        let c = crate::datastore::credentials(&[l.addr(Pod::SpireDb)])?;
        let pg = self.state.pg_user;
        crate::procs::create_with_mode(&l.spire_db("tls/tls.crt"), &c.cert_pem, 0o644)?;
        crate::procs::create_with_mode(&l.spire_db("tls/tls.key"), &c.key_pem, 0o600)?;
        for f in ["tls/tls.crt", "tls/tls.key"] {
            chown(&l.spire_db(f), pg)?;
        }
        crate::procs::create_with_mode(&client.join("ca.crt"), &c.ca_pem, 0o644)?;
        crate::procs::create_with_mode(&client.join("password"), c.password.as_bytes(), 0o600)?;
        chmod(&client.join("password"), 0o600)
    }
}

pub(super) fn finish_initdb(child: std::process::Child) -> anyhow::Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "init-db.sh failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
