//! A real Kubernetes API server with no nodes, for checking the kind layer without a cluster:
//! etcd and kube-apiserver of the pinned release (built from source by `cargo xtask deps`,
//! `xtask/kube-api`), started in a private scratch directory. Admission runs as on kind —
//! PodSecurity included, privileged containers allowed as kubeadm allows them — but nothing
//! schedules or runs a pod: objects are stored, validated and admitted, never executed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::deps::KubeApiBins;
use crate::procs::Children;

pub struct ApiServer {
    // Dropped in order: the processes (API server first, then etcd), then their directory.
    children: Children,
    dir: tempfile::TempDir,
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    /// The kubeconfig's contexts, all naming this server; the first is the current one.
    pub contexts: Vec<String>,
    url: String,
    ca: PathBuf,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A file only its owner may read: keys, tokens, kubeconfigs.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    crate::procs::create_with_mode(path, data, 0o600)
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until the API server is ready (a few seconds).
    /// The kubeconfig names it with each of `contexts`.
    pub fn start(bins: &KubeApiBins, contexts: &[&str]) -> anyhow::Result<ApiServer> {
        // A private (0700) scratch directory, removed with the server.
        let dir = tempfile::Builder::new()
            .prefix("spire-lab-apiserver-")
            .tempdir()?;
        let root = dir.path().to_owned();
        let p = |rel: &str| root.join(rel);
        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
        let mut server = ApiServer {
            children: Children::default(),
            kubectl: bins.kubectl.clone(),
            kubeconfig: p("kubeconfig"),
            contexts: contexts.iter().map(|c| c.to_string()).collect(),
            url: format!("https://127.0.0.1:{secure}"),
            // Self-signed by the server, written when it starts.
            ca: p("certs/apiserver.crt"),
            dir,
        };

        // Credentials of this throwaway server only: a bearer token and the service-account key.
        let mut token = [0u8; 24];
        openssl::rand::rand_bytes(&mut token)?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        write_private(
            &p("tokens.csv"),
            format!("{token},lab-admin,lab-admin,system:masters\n").as_bytes(),
        )?;
        let key = openssl::rsa::Rsa::generate(2048)?;
        write_private(&p("sa.key"), &key.private_key_to_pem()?)?;
        write_private(
            &server.kubeconfig,
            server.kubeconfig_text(&token, &server.contexts).as_bytes(),
        )?;

        let log = |name: &str| -> anyhow::Result<Stdio> {
            Ok(std::fs::File::create(p(&format!("{name}.log")))?.into())
        };
        let etcd = Command::new(&bins.etcd)
            .arg("--data-dir")
            .arg(p("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
                "--log-level",
                "warn",
            ])
            .stdout(log("etcd")?)
            .stderr(log("etcd")?)
            .spawn()
            .with_context(|| format!("start {}", bins.etcd.display()))?;
        server.children.0.push(etcd);
        let apiserver = Command::new(&bins.kube_apiserver)
            .args([
                "--etcd-servers",
                &format!("http://127.0.0.1:{client}"),
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &secure.to_string(),
                // kind (kubeadm) allows privileged containers: the CSI driver is one.
                "--allow-privileged=true",
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range",
                "10.96.0.0/16",
            ])
            .arg("--cert-dir")
            .arg(p("certs"))
            .arg("--token-auth-file")
            .arg(p("tokens.csv"))
            .arg("--service-account-key-file")
            .arg(p("sa.key"))
            .arg("--service-account-signing-key-file")
            .arg(p("sa.key"))
            .stdout(log("kube-apiserver")?)
            .stderr(log("kube-apiserver")?)
            .spawn()
            .with_context(|| format!("start {}", bins.kube_apiserver.display()))?;
        server.children.0.push(apiserver);

        crate::procs::wait_for(Duration::from_secs(60), || {
            let ready = server
                .kubectl()
                .args(["get", "--raw", "/readyz"])
                .output()?;
            anyhow::ensure!(ready.status.success(), "{}", crate::procs::printed(&ready));
            Ok(())
        })
        .with_context(|| {
            format!(
                "kube-apiserver did not get ready; its log ends:\n{}",
                server.log_tail("kube-apiserver")
            )
        })?;
        Ok(server)
    }

    /// kubectl, with this server's kubeconfig and context.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig)
            .args(["--context", &self.contexts[0]]);
        c
    }

    /// A kubeconfig for this server that authenticates with `token`, with each of `contexts`
    /// (the first current).
    fn kubeconfig_text(&self, token: &str, contexts: &[String]) -> String {
        let mut text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncurrent-context: {}\ncontexts:\n",
            self.url,
            self.ca.display(),
            contexts[0]
        );
        for c in contexts {
            text += &format!("- name: {c}\n  context:\n    cluster: lab\n    user: user\n");
        }
        text
    }

    /// A kubeconfig for this server that authenticates with `token` (a service account's, say).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        self.kubeconfig_text(token, &["lab".to_owned()])
    }

    pub fn log_tail(&self, name: &str) -> String {
        crate::procs::tail(&self.dir.path().join(format!("{name}.log")), 20)
    }
}
