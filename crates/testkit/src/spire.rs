//! A real SPIRE server and agent of the pinned release, for tests of what talks to the Workload
//! API: the server on a SQLite datastore in a scratch directory, one agent attested by a join
//! token, the unix workload attestor. Entries select by uid; other identities for test clients
//! are minted by the server (`spire-server x509 mint`), signed by the same CA.
//!
//! This is the smallest SPIRE that works, not the lab's: the lab's own server and agent configs
//! run in the local runtime and on kind, where the scenarios exercise them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct Spire {
    dir: tempfile::TempDir,
    bin: PathBuf,
    server: Child,
    agent: Child,
    agent_id: String,
}

/// An X.509-SVID the server minted, in files (PEM): `svid.pem` (leaf), `key.pem`, `bundle.pem`.
pub struct Minted {
    pub dir: PathBuf,
}

impl Minted {
    pub fn cert(&self) -> PathBuf {
        self.dir.join("svid.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }
}

fn spire_bin() -> PathBuf {
    let pins = pins::Pins::of_this_repository().unwrap_or_else(|e| panic!("{e}"));
    let bin = pins.spire.bin_dir();
    assert!(
        bin.join("spire-server").is_file() && bin.join("spire-agent").is_file(),
        "SPIRE {} not found in {}: install it with `cargo xtask deps`",
        pins.spire.version,
        bin.display()
    );
    bin
}

fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(t) => return t,
            Err(e) if start.elapsed() > within => panic!("{what}: not within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

impl Spire {
    /// A server, then an agent attested with a join token; returns once the agent is healthy.
    pub fn start() -> Spire {
        Spire::start_with_jwt_issuer(None)
    }

    /// `start`, the server writing `jwt_issuer` into JWT-SVIDs (`iss`) when given.
    pub fn start_with_jwt_issuer(jwt_issuer: Option<&str>) -> Spire {
        let bin = spire_bin();
        let dir = tempfile::Builder::new().prefix("spire-").tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("server")).unwrap();
        std::fs::create_dir_all(d.join("agent")).unwrap();
        let port = free_port();
        let td = contract::TRUST_DOMAIN;
        std::fs::write(
            d.join("server.conf"),
            format!(
                r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{sock}"
    trust_domain = "{td}"
    data_dir = "{data}"
    log_level = "WARN"
    ca_key_type = "ec-p256"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
    {issuer}
    experimental {{
        cache_reload_interval = "1s"
    }}
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"#,
                sock = d.join("server.sock").display(),
                issuer = jwt_issuer
                    .map(|i| format!("jwt_issuer = \"{i}\""))
                    .unwrap_or_default(),
                data = d.join("server").display(),
            ),
        )
        .unwrap();
        let server = Command::new(bin.join("spire-server"))
            .args(["run", "-config"])
            .arg(d.join("server.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("server.log")).unwrap())
            .spawn()
            .expect("start spire-server");
        let mut spire = Spire {
            dir,
            bin,
            server,
            // Replaced below, once there is a token.
            agent: Command::new("true").spawn().unwrap(),
            agent_id: String::new(),
        };
        let d = spire.dir.path().to_owned();
        wait_until("spire-server healthy", Duration::from_secs(30), || {
            spire.server_cli(&["healthcheck"]).map(|_| ())
        });
        let bundle = spire.server_cli(&["bundle", "show"]).unwrap();
        std::fs::write(d.join("bundle.pem"), bundle).unwrap();
        let token = spire
            .server_cli(&["token", "generate", "-ttl", "600"])
            .unwrap();
        let token = token
            .lines()
            .find_map(|l| l.strip_prefix("Token:"))
            .unwrap_or_else(|| panic!("no join token in: {token}"))
            .trim()
            .to_owned();
        spire.agent_id = format!("spiffe://{td}/spire/agent/join_token/{token}");
        std::fs::write(
            d.join("agent.conf"),
            format!(
                r#"agent {{
    data_dir = "{data}"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{sock}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{td}"
    experimental {{
        sync_interval = "1s"
    }}
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
                data = d.join("agent").display(),
                sock = spire.socket().display(),
                bundle = d.join("bundle.pem").display(),
            ),
        )
        .unwrap();
        let _ = spire.agent.wait();
        spire.agent = Command::new(spire.bin.join("spire-agent"))
            .args(["run", "-joinToken", &token, "-config"])
            .arg(d.join("agent.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("agent.log")).unwrap())
            .spawn()
            .expect("start spire-agent");
        // Attested and serving: the Workload API answers (with "no identity issued" until an
        // entry selects the caller).
        wait_until(
            "spire-agent serving the Workload API",
            Duration::from_secs(30),
            || {
                if let Some(status) = spire.agent.try_wait().unwrap() {
                    panic!("spire-agent exited ({status}):\n{}", spire.logs());
                }
                match spire.agent_cli(&["api", "fetch", "x509"]) {
                    Ok(_) => Ok(()),
                    Err(e) if e.contains("no identity issued") => Ok(()),
                    Err(e) => Err(format!("{e}\n{}", spire.logs())),
                }
            },
        );
        spire
    }

    /// The agent's Workload API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The Workload API as `SPIFFE_ENDPOINT_SOCKET` names it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn run(&self, program: &str, args: &[&str], socket: &Path) -> Result<String, String> {
        let out = Command::new(self.bin.join(program))
            .args(args)
            .arg("-socketPath")
            .arg(socket)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `spire-server <args> -socketPath …`: its output, or the error it printed.
    pub fn server_cli(&self, args: &[&str]) -> Result<String, String> {
        self.run("spire-server", args, &self.dir.path().join("server.sock"))
    }

    /// `spire-agent <args> -socketPath …` (the Workload API socket).
    pub fn agent_cli(&self, args: &[&str]) -> Result<String, String> {
        self.run("spire-agent", args, &self.socket())
    }

    /// Registers `spiffe_id` for every process of this test's uid under the agent, with an
    /// X.509-SVID TTL of `x509_ttl_s` and the DNS name `dns` if given; the entry's ID.
    pub fn register_this_uid(&self, spiffe_id: &str, dns: Option<&str>, x509_ttl_s: u32) -> String {
        let uid = unsafe { libc::geteuid() }.to_string();
        let selector = format!("unix:uid:{uid}");
        let ttl = x509_ttl_s.to_string();
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            &self.agent_id,
            "-spiffeID",
            spiffe_id,
            "-selector",
            &selector,
            "-x509SVIDTTL",
            &ttl,
        ];
        if let Some(dns) = dns {
            args.extend(["-dns", dns]);
        }
        let out = self.server_cli(&args).unwrap_or_else(|e| panic!("{e}"));
        out.lines()
            .find_map(|l| l.strip_prefix("Entry ID"))
            .map(|l| l.trim_start_matches([' ', ':']).trim().to_owned())
            .unwrap_or_else(|| panic!("no entry ID in: {out}"))
    }

    /// Waits until the Workload API gives this process an X.509-SVID.
    pub fn wait_for_svid(&self) {
        wait_until(
            "an X.509-SVID from the Workload API",
            Duration::from_secs(30),
            || self.agent_cli(&["api", "fetch", "x509"]).map(|_| ()),
        );
    }

    /// An X.509-SVID for `spiffe_id` signed by the server's CA (no entry, no agent), in files.
    pub fn mint(&self, spiffe_id: &str, ttl_s: u32) -> Minted {
        let dir = self.dir.path().join(format!(
            "minted-{}",
            spiffe_id.rsplit('/').next().unwrap_or("x")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ttl = format!("{ttl_s}s");
        let dir_s = dir.display().to_string();
        self.server_cli(&[
            "x509",
            "mint",
            "-spiffeID",
            spiffe_id,
            "-ttl",
            &ttl,
            "-write",
            &dir_s,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        Minted { dir }
    }

    /// Stops the agent: the Workload API goes away, SVIDs already handed out stay until they
    /// expire.
    pub fn stop_agent(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }

    /// A JWT-SVID for `spiffe_id` and `audience` signed by the server (no entry, no agent).
    pub fn mint_jwt(&self, spiffe_id: &str, audience: &str, ttl_s: u32) -> String {
        let ttl = format!("{ttl_s}s");
        self.server_cli(&[
            "jwt",
            "mint",
            "-spiffeID",
            spiffe_id,
            "-audience",
            audience,
            "-ttl",
            &ttl,
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_owned()
    }

    /// The server's log so far, for a failing test's message.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "server:\n{}\nagent:\n{}",
            read("server.log"),
            read("agent.log")
        )
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        for child in [&mut self.agent, &mut self.server] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
