//! OpenBao and SPIRE's OIDC discovery provider on kind: the provider's serving certificate (a
//! Secret) and its CA (a ConfigMap OpenBao reads), OpenBao's initialization and unsealing (the
//! unseal key and root token in `.lab/kind/openbao-init.json`, 0600, outside the cluster), and
//! the lab's `configure.sh` run inside its pod; `bao` as the administrator, the root token on
//! stdin, never on a command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::procs::wait_for;

/// The provider's Service, which its certificate names, and its issuer.
const OIDC_SERVICE: &str = "spire-oidc.spire-system.svc";
const POD: &str = "openbao-0";
/// The lab's lease times for the reports role (as locally).
const REPORTS_TTL: &str = "60s";
const REPORTS_MAX_TTL: &str = "120s";

/// What `bao` needs inside OpenBao's pod: its own API on the pod's loopback, checked against the
/// SPIFFE bundle and OpenBao's DNS SAN.
const BAO_ENV: &[&str] = &[
    "BAO_ADDR=https://127.0.0.1:8200",
    "BAO_CACERT=/spiffe-certs/svid_bundle.pem",
    "BAO_TLS_SERVER_NAME=openbao",
    "HOME=/openbao/run",
];

fn init_file() -> PathBuf {
    crate::project_root().join(".lab/kind/openbao-init.json")
}

/// The provider's certificate (a Secret) and its CA (a ConfigMap in `demo`, for OpenBao), made
/// once per cluster.
pub fn oidc_secret(kubectl: &dyn Fn() -> Command) -> anyhow::Result<()> {
    let present = kubectl()
        .args([
            "-n",
            "spire-system",
            "get",
            "secret",
            "spire-oidc-tls",
            "-o",
            "name",
        ])
        .output()?;
    if present.status.success() {
        return Ok(());
    }
    let c = crate::tls::server_cert(
        "SPIRE lab OIDC discovery provider",
        &[OIDC_SERVICE, "spire-oidc.spire-system.svc.cluster.local"],
        &[],
    )?;
    let b64 = |b: &[u8]| openssl::base64::encode_block(b);
    let ca = String::from_utf8(c.ca_pem.clone())?.replace('\n', "\n    ");
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: spire-oidc-tls\n  namespace: spire-system\ntype: Opaque\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: spire-oidc-ca\n  namespace: demo\ndata:\n  ca.crt: |\n    {ca}\n",
        b64(&c.cert_pem),
        b64(&c.key_pem),
    );
    run(kubectl().args(["apply", "-f", "-"]), Some(&yaml))
        .context("kubectl apply of the OIDC provider's certificate")?;
    Ok(())
}

/// `cmd` with `stdin`: its stdout, or its error with what it printed.
fn run(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    if let Some(s) = stdin {
        input.write_all(s.as_bytes())?;
    }
    drop(input);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{}", crate::procs::printed(&out).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `bao ARGS…` inside OpenBao's pod, with the root token when there is one (first line of
/// stdin), then `stdin`.
pub fn bao(
    kubectl: &dyn Fn() -> Command,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let token = root_token().unwrap_or_default();
    let mut cmd = kubectl();
    cmd.args([
        "-n", "demo", "exec", "-i", POD, "-c", "openbao", "--", "env",
    ])
    .args(BAO_ENV)
    .args([
        "sh",
        "-c",
        "read -r t; [ -n \"$t\" ] && export BAO_TOKEN=\"$t\"; exec bao \"$@\"",
        "bao",
    ])
    .args(args);
    let input = format!("{token}\n{}", stdin.unwrap_or_default());
    run(&mut cmd, Some(&input)).with_context(|| format!("bao {}", args.first().unwrap_or(&"")))
}

fn root_token() -> anyhow::Result<String> {
    Ok(crate::openbao::read_init(&init_file())?.root_token)
}

/// Waits for OpenBao's container to run, initializes it the first time (its data is the pod's),
/// unseals it and runs `configure.sh` in its pod.
pub fn unseal_and_configure(kubectl: &dyn Fn() -> Command) -> anyhow::Result<()> {
    let (status, _) = wait_for(Duration::from_secs(180), || {
        let out = kubectl()
            .args(["-n", "demo", "exec", POD, "-c", "openbao", "--", "env"])
            .args(BAO_ENV)
            .args(["bao", "status", "-format=json"])
            .output()?;
        // Exit status 2: sealed, the status printed all the same.
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .with_context(|| format!("OpenBao: {}", crate::procs::printed(&out).trim()))
    })
    .context("OpenBao's container did not answer")?;
    crate::openbao::init_and_unseal(
        &|args, stdin| bao(kubectl, args, stdin),
        status["initialized"] == true,
        status["sealed"] != false,
        &init_file(),
    )?;
    wait_for(Duration::from_secs(60), || {
        bao(kubectl, &["read", "-format=json", "sys/leader"], None)
    })
    .context("OpenBao did not become active")?;
    let mut token = [0u8; 16];
    openssl::rand::rand_bytes(&mut token)?;
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = kubectl();
    cmd.args(["-n", "demo", "exec", "-i", POD, "-c", "openbao", "--", "env"])
        .args(BAO_ENV)
        .args([
            &format!("LAB_OIDC_ISSUER=https://{OIDC_SERVICE}"),
            "LAB_OIDC_CA_FILE=/openbao/oidc-ca/ca.crt",
            "LAB_PG_HOST=postgres.demo.svc.cluster.local",
            "LAB_PG_PORT=5432",
            "LAB_CERTS=/spiffe-certs",
            &format!("LAB_REPORTS_TTL={REPORTS_TTL}"),
            &format!("LAB_REPORTS_MAX_TTL={REPORTS_MAX_TTL}"),
            "sh",
            "-c",
            "read -r BAO_TOKEN; read -r LAB_API_TOKEN; export BAO_TOKEN LAB_API_TOKEN; exec sh /openbao/config/configure.sh",
        ]);
    run(&mut cmd, Some(&format!("{}\n{token}\n", root_token()?)))
        .context("configure.sh in OpenBao's pod")?;
    Ok(())
}
