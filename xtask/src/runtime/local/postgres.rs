//! PostgreSQL on the local runtime: the user it runs as, `initdb`, the demo database from
//! `init.sql`, and psql as the database superuser over the Unix socket.

use anyhow::{Context, bail};

use super::{LocalLab, Profile};

/// The uid and gid PostgreSQL runs as: `postgres` when we are root (it refuses root), else ours.
pub(super) fn pg_user() -> anyhow::Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("running as root needs the `postgres` user, which the postgresql package creates: run `cargo xtask deps`")?;
    let f: Vec<&str> = line.split(':').collect();
    Ok(Some((f[2].parse()?, f[3].parse()?)))
}

impl LocalLab {
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
        db: &str,
        input: [&std::ffi::OsStr; 2],
    ) -> anyhow::Result<String> {
        let out = self
            .pg_command("psql")
            .arg("-h")
            .arg(self.layout().pg_run())
            .args([
                "-p",
                &self.ports().postgres.to_string(),
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
    pub(super) fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        self.psql_run(db, ["-c".as_ref(), sql.as_ref()])
    }

    /// Starts init-db.sh (the script PostgreSQL's init container runs on kind) for a new data
    /// directory: initdb, init.sql through a socket-only server, stopped again. None when the
    /// data directory holds a database already; wait on the child with `finish_initdb`.
    pub(super) fn start_initdb(&self) -> anyhow::Result<Option<std::process::Child>> {
        use std::os::unix::process::CommandExt;
        let data = self.layout().p("postgres/data");
        if data.join("PG_VERSION").exists() {
            return Ok(None);
        }
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg(self.layout().config("init-db.sh"))
            .env("PGDATA", &data)
            .env("PG_INIT_SQL", self.layout().config("init.sql"))
            .env("PG_INIT_SOCKETS", self.layout().pg_run())
            .env("PATH", self.pg_path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some((uid, gid)) = self.state.pg_user {
            cmd.uid(uid).gid(gid);
        }
        Ok(Some(cmd.spawn().context("start init-db.sh")?))
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

    pub(super) fn initdb(&self) -> anyhow::Result<()> {
        if let Some(child) = self.start_initdb()? {
            finish_initdb(child)?;
        }
        Ok(())
    }

    /// After PostgreSQL is ready: the benchmark's plaintext baseline logs in and reads without
    /// the identity checks (no client certificate, no SPIFFE ID).
    pub(super) fn init_database(&self) -> anyhow::Result<()> {
        if self.state.profile == Profile::Plaintext {
            self.psql(
                "demo",
                "ALTER EVENT TRIGGER backend_login_needs_the_backend_spiffe_id DISABLE",
            )?;
            self.psql("demo", "ALTER TABLE orders DISABLE ROW LEVEL SECURITY")?;
        }
        Ok(())
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
