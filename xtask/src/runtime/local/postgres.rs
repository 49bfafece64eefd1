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
        let mut cmd = std::process::Command::new(self.state.tools.pg_bin.join(program));
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

    /// Starts `initdb` for a new data directory (None when it exists); wait on the child.
    pub(super) fn start_initdb(&self) -> anyhow::Result<Option<std::process::Child>> {
        let data = self.layout().p("postgres/data");
        if data.join("PG_VERSION").exists() {
            return Ok(None);
        }
        let child = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["--auth=peer", "-E", "UTF8", "--locale=C", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("start initdb")?;
        Ok(Some(child))
    }

    pub(super) fn initdb(&self) -> anyhow::Result<()> {
        if let Some(child) = self.start_initdb()? {
            finish_initdb(child)?;
        }
        Ok(())
    }

    /// The demo database from manifests/postgres/config/init.sql, the first time only.
    pub(super) fn init_database(&self) -> anyhow::Result<()> {
        if self.psql(
            "postgres",
            "SELECT 1 FROM pg_database WHERE datname = 'demo'",
        )? == "1"
        {
            return Ok(());
        }
        self.psql("postgres", "CREATE DATABASE demo")?;
        let init = self.layout().config("init.sql");
        self.psql_run("demo", ["-f".as_ref(), init.as_os_str()])
            .context("init.sql")?;
        if self.state.profile == Profile::Plaintext {
            // No client certificate, no SPIFFE ID: the baseline reads without the identity check.
            self.psql("demo", "ALTER TABLE orders DISABLE ROW LEVEL SECURITY")?;
        }
        Ok(())
    }
}

pub(super) fn finish_initdb(child: std::process::Child) -> anyhow::Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
