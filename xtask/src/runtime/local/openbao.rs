//! OpenBao and SPIRE's OIDC discovery provider on the local runtime: the provider's serving
//! certificate, OpenBao's initialization and unsealing (its unseal key and root token in a 0600
//! file of the state directory), `configure.sh` (the script the kind runtime runs too), and the
//! `bao` CLI as the lab's administrator.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use contract::Workload;

use super::layout::Layout;
use super::pods::Pod;
use super::{LocalLab, chown};
use crate::procs::create_with_mode;

/// The reports role's lease times the lab starts with (scenarios shorten them for a while).
pub const REPORTS_TTL: &str = "60s";
pub const REPORTS_MAX_TTL: &str = "120s";

/// The OIDC discovery provider's issuer URL: what the SPIRE servers write into JWT-SVIDs and
/// where OpenBao discovers the keys (its pod's address).
pub fn oidc_issuer(l: &Layout) -> String {
    format!("https://{}:{}", l.addr(Pod::SpireOidc), l.ports.spire_oidc)
}

/// What `bao status` says.
#[derive(Debug, serde::Deserialize)]
pub(super) struct BaoStatus {
    pub initialized: bool,
    pub sealed: bool,
}

impl LocalLab {
    fn openbao_init_file(&self) -> PathBuf {
        self.layout().p("openbao/init.json")
    }

    /// The provider's serving certificate for its pod's address (key 0600, the provider's uid)
    /// and the CA OpenBao checks it with: made once per state directory.
    pub(super) fn spire_oidc_cert(&self) -> anyhow::Result<()> {
        let l = self.layout();
        let ca = l.p("spire-oidc/ca.crt");
        if ca.exists() {
            return Ok(());
        }
        let c = crate::tls::server_cert(
            "SPIRE lab OIDC discovery provider",
            &["spire-oidc.spire-system.svc"],
            &[l.addr(Pod::SpireOidc)],
        )?;
        let owner = self.user_of(crate::lab::Component::SpireOidc);
        create_with_mode(&l.p("spire-oidc/tls/tls.crt"), &c.cert_pem, 0o644)?;
        create_with_mode(&l.p("spire-oidc/tls/tls.key"), &c.key_pem, 0o600)?;
        for f in ["spire-oidc/tls/tls.crt", "spire-oidc/tls/tls.key"] {
            chown(&l.p(f), owner)?;
        }
        create_with_mode(&ca, &c.ca_pem, 0o644)
    }

    /// The `bao` CLI against the lab's OpenBao, trusting the SPIFFE bundle and expecting the
    /// DNS name in OpenBao's SVID; with the root token once there is one.
    fn bao(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(&self.state.tools.bao);
        cmd.env_clear().envs(self.bao_env()?);
        Ok(cmd)
    }

    fn bao_env(&self) -> anyhow::Result<Vec<(&'static str, std::ffi::OsString)>> {
        let l = self.layout();
        let mut env = vec![
            ("PATH", "/usr/bin:/bin".into()),
            // bao looks for a token helper under $HOME: the state directory's, never ours.
            ("HOME", l.p("openbao").into()),
            (
                "BAO_ADDR",
                format!("https://{}", self.reach(Pod::OpenBao, l.ports.openbao)?).into(),
            ),
            (
                "BAO_CACERT",
                l.certs("openbao").join("svid_bundle.pem").into(),
            ),
            (
                "BAO_TLS_SERVER_NAME",
                Workload::OpenBao.dns_name().unwrap_or_default().into(),
            ),
            ("BAO_CLIENT_TIMEOUT", "10s".into()),
        ];
        if let Ok(init) = crate::openbao::read_init(&self.openbao_init_file()) {
            env.push(("BAO_TOKEN", init.root_token.into()));
        }
        Ok(env)
    }

    /// `bao ARGS…` as the lab's administrator, with `stdin`: what it printed, or its error.
    pub(super) fn run_bao(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = self.bao()?;
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("run bao")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("bao's stdin")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "bao {}: {}",
                args.first().copied().unwrap_or_default(),
                crate::procs::printed(&out).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether OpenBao answers, and whether it is initialized and sealed.
    pub(super) fn openbao_status(&self) -> anyhow::Result<BaoStatus> {
        // Exit status 2: sealed, with the status printed all the same.
        let out = self.bao()?.args(["status", "-format=json"]).output()?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("OpenBao: {}", crate::procs::printed(&out).trim()))
    }

    /// Initializes OpenBao the first time (one unseal key; it and the root token into a 0600
    /// file), unseals it, and runs `configure.sh`; Ok once it is unsealed and configured.
    pub(super) fn unseal_and_configure_openbao(&self) -> anyhow::Result<()> {
        let status = self.openbao_status()?;
        crate::openbao::init_and_unseal(
            &|args, stdin| self.run_bao(args, stdin),
            status.initialized,
            status.sealed,
            &self.openbao_init_file(),
        )?;
        if self.openbao_status()?.sealed {
            bail!("OpenBao is still sealed");
        }
        self.configure_openbao()
    }

    /// `configure.sh` with the local runtime's addresses and paths.
    fn configure_openbao(&self) -> anyhow::Result<()> {
        let l = self.layout();
        let bao_dir = self.state.tools.bao.parent().context("bao's directory")?;
        let mut token = [0u8; 16];
        openssl::rand::rand_bytes(&mut token)?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let out = Command::new("/bin/sh")
            .arg(l.config("configure-openbao.sh"))
            .env_clear()
            .envs(self.bao_env()?)
            .env("PATH", format!("{}:/usr/bin:/bin", bao_dir.display()))
            .env("LAB_OIDC_ISSUER", oidc_issuer(l))
            .env("LAB_OIDC_CA_FILE", l.p("spire-oidc/ca.crt"))
            .env("LAB_PG_HOST", l.addr(Pod::Postgres).to_string())
            .env("LAB_PG_PORT", l.ports.postgres.to_string())
            .env("LAB_CERTS", l.certs("openbao"))
            .env("LAB_REPORTS_TTL", REPORTS_TTL)
            .env("LAB_REPORTS_MAX_TTL", REPORTS_MAX_TTL)
            .env("LAB_API_TOKEN", token)
            .output()
            .context("run configure-openbao.sh")?;
        if !out.status.success() {
            bail!(
                "configure-openbao.sh failed: {}",
                crate::procs::printed(&out).trim()
            );
        }
        Ok(())
    }
}
