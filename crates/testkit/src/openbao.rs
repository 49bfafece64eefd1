//! SPIRE's OIDC discovery provider and OpenBao, real and of the pinned releases, for tests of
//! the broker pattern. OpenBao runs the lab's own `openbao.hcl` (addresses and paths moved into
//! a scratch directory) and is configured by the lab's own `configure.sh`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use svid::test_ca::{Leaf, TestCa};

use crate::{Spire, free_port, manifests};

fn pins() -> pins::Pins {
    pins::Pins::of_this_repository().unwrap_or_else(|e| panic!("{e}"))
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > within => panic!("{what}: not within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The provider's issuer for a port: what the SPIRE server must write into JWT-SVIDs (start it
/// with `Spire::start_with_jwt_issuer`) before the provider runs.
pub fn oidc_issuer(port: u16) -> String {
    format!("https://localhost:{port}")
}

/// SPIRE's OIDC discovery provider on `127.0.0.1:port`, its keys from `spire`'s Workload API
/// (registered for this uid), serving TLS with a certificate for `localhost` from `ca`.
pub struct OidcProvider {
    dir: tempfile::TempDir,
    child: Child,
    pub issuer: String,
}

impl OidcProvider {
    pub fn start(spire: &Spire, port: u16, ca: &TestCa) -> OidcProvider {
        let bin = pins().spire.oidc_provider_bin();
        assert!(
            bin.is_file(),
            "the OIDC discovery provider is not at {}: build it with `cargo xtask deps`",
            bin.display()
        );
        spire.register_this_uid(contract::ids::OIDC_PROVIDER_ID, None, 3600);
        spire.wait_for_svid();
        let dir = tempfile::Builder::new().prefix("oidc-").tempdir().unwrap();
        let d = dir.path();
        ca.write_svid(
            d,
            &Leaf::new(contract::ids::OIDC_PROVIDER_ID, Some("localhost")),
        );
        let health = free_port();
        let issuer = oidc_issuer(port);
        std::fs::write(
            d.join("provider.conf"),
            format!(
                r#"log_level = "WARN"
jwt_issuer = "{issuer}"
domains = ["localhost"]
serving_cert_file {{
    addr = "127.0.0.1:{port}"
    cert_file_path = "{cert}"
    key_file_path = "{key}"
}}
workload_api {{
    socket_path = "{sock}"
    trust_domain = "{td}"
}}
health_checks {{
    bind_port = {health}
    live_path = "/live"
    ready_path = "/ready"
}}
"#,
                cert = d.join("svid.pem").display(),
                key = d.join("svid_key.pem").display(),
                sock = spire.socket().display(),
                td = contract::TRUST_DOMAIN,
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("-config")
            .arg(d.join("provider.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("provider.log")).unwrap())
            .spawn()
            .expect("start the OIDC discovery provider");
        let mut p = OidcProvider { dir, child, issuer };
        wait_until("the provider ready", Duration::from_secs(30), || {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("the provider exited ({status}):\n{}", p.log());
            }
            std::net::TcpStream::connect(("127.0.0.1", health))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        p
    }

    /// The CA its certificate chains to, as OpenBao is given it.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("svid_bundle.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OpenBao from the lab's `openbao.hcl`, its TLS listener serving an SVID from `ca` (SPIFFE ID
/// of `Workload::OpenBao`, DNS `openbao`), initialized and unsealed; `configure` runs the lab's
/// `configure.sh`.
pub struct OpenBao {
    dir: tempfile::TempDir,
    child: Child,
    bin: PathBuf,
    pub port: u16,
    root_token: String,
}

impl OpenBao {
    pub fn start(ca: &TestCa) -> OpenBao {
        let bin = pins().openbao.wheel_bin().unwrap_or_else(|| {
            panic!("OpenBao's bao not found: install it with `cargo xtask deps`")
        });
        let dir = tempfile::Builder::new()
            .prefix("openbao-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["certs", "data", "run", "audit"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        ca.write_svid(
            &d.join("certs"),
            &Leaf::new(&contract::Workload::OpenBao.spiffe_id(), Some("openbao")),
        );
        let port = free_port();
        let hcl = std::fs::read_to_string(manifests().join("openbao/config/openbao.hcl"))
            .unwrap()
            .replace("0.0.0.0:8200", &format!("127.0.0.1:{port}"))
            .replace(
                "https://openbao.demo.svc:8200",
                &format!("https://127.0.0.1:{port}"),
            )
            .replace(
                "https://openbao-0.openbao.demo.svc:8201",
                &format!("https://127.0.0.1:{}", port + 1),
            )
            .replace("/spiffe-certs", &d.join("certs").display().to_string())
            .replace("/openbao/", &format!("{}/", d.display()));
        std::fs::write(d.join("openbao.hcl"), hcl).unwrap();
        let child = Command::new(&bin)
            .arg("server")
            .arg(format!("-config={}", d.join("openbao.hcl").display()))
            .env_clear()
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("openbao.log")).unwrap())
            .spawn()
            .expect("start OpenBao");
        let mut bao = OpenBao {
            dir,
            child,
            bin,
            port,
            root_token: String::new(),
        };
        wait_until("OpenBao answering", Duration::from_secs(30), || {
            if let Some(status) = bao.child.try_wait().unwrap() {
                panic!("OpenBao exited ({status}):\n{}", bao.log());
            }
            let out = bao
                .command()
                .args(["status", "-format=json"])
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map(drop)
                .map_err(|e| {
                    format!(
                        "{e}: {}\n{}",
                        String::from_utf8_lossy(&out.stderr),
                        bao.log()
                    )
                })
        });
        let init: serde_json::Value = serde_json::from_str(
            &bao.bao(
                &[
                    "operator",
                    "init",
                    "-format=json",
                    "-key-shares=1",
                    "-key-threshold=1",
                ],
                None,
            )
            .unwrap(),
        )
        .unwrap();
        bao.root_token = init["root_token"].as_str().unwrap().to_owned();
        let key = init["unseal_keys_b64"][0].as_str().unwrap().to_owned();
        bao.bao(&["write", "sys/unseal", "key=-"], Some(&key))
            .unwrap();
        wait_until("OpenBao active", Duration::from_secs(30), || {
            bao.bao(&["read", "sys/leader"], None).map(drop)
        });
        bao
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .env("BAO_ADDR", format!("https://127.0.0.1:{}", self.port))
            .env("BAO_CACERT", self.certs().join("svid_bundle.pem"))
            .env("BAO_TLS_SERVER_NAME", "openbao");
        if !self.root_token.is_empty() {
            cmd.env("BAO_TOKEN", &self.root_token);
        }
        cmd
    }

    /// `bao ARGS…` as the root token, `stdin` on its standard input.
    pub fn bao(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The lab's `configure.sh`: jwt auth against `provider`, the database secrets engine on
    /// the PostgreSQL at `pg_port` (OpenBao's client certificate: its own SVID), the demo secret.
    pub fn configure(&self, provider: &OidcProvider, pg_port: u16, ttl: &str, max_ttl: &str) {
        let bin_dir = self.bin.parent().unwrap().display().to_string();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(manifests().join("openbao/config/configure.sh"))
            .env_clear()
            .envs(self.command().get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env("PATH", format!("{bin_dir}:/usr/bin:/bin"))
            .env("LAB_OIDC_ISSUER", &provider.issuer)
            .env("LAB_OIDC_CA_FILE", provider.ca_file())
            .env("LAB_PG_HOST", "127.0.0.1")
            .env("LAB_PG_PORT", pg_port.to_string())
            .env("LAB_CERTS", self.certs())
            .env("LAB_REPORTS_TTL", ttl)
            .env("LAB_REPORTS_MAX_TTL", max_ttl)
            .env("LAB_API_TOKEN", "test-api-token-0123");
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "configure.sh failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("openbao.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
