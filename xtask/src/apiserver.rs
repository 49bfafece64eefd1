//! A real Kubernetes API server with no nodes, for checking the kind layer without a cluster:
//! etcd and kube-apiserver of the pinned release (built from source by `cargo xtask deps`,
//! `xtask/kube-api`), started in a private scratch directory. Admission runs as on kind —
//! PodSecurity included, privileged containers allowed as kubeadm allows them — but nothing
//! schedules or runs a pod: objects are stored, validated and admitted, never executed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::deps::KubeApiBins;

pub struct ApiServer {
    dir: PathBuf,
    children: Vec<Child>,
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

pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    std::io::Write::write_all(&mut o.write(true).create_new(true).open(path)?, data)?;
    Ok(())
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until the API server is ready (a few seconds).
    /// The kubeconfig names it with each of `contexts`.
    pub fn start(bins: &KubeApiBins, contexts: &[&str]) -> anyhow::Result<ApiServer> {
        let dir = std::env::temp_dir().join(format!(
            "spire-lab-apiserver-{}-{}",
            std::process::id(),
            crate::local::now()
        ));
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        let mut server = ApiServer {
            dir: dir.clone(),
            children: Vec::new(),
            kubectl: bins.kubectl.clone(),
            kubeconfig: dir.join("kubeconfig"),
            contexts: contexts.iter().map(|c| c.to_string()).collect(),
            url: String::new(),
            ca: dir.join("certs/apiserver.crt"),
        };

        // Credentials of this throwaway server only: a bearer token and the service-account key.
        let mut token = [0u8; 24];
        openssl::rand::rand_bytes(&mut token)?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        write_private(
            &dir.join("tokens.csv"),
            format!("{token},lab-admin,lab-admin,system:masters\n").as_bytes(),
        )?;
        let key = openssl::rsa::Rsa::generate(2048)?;
        write_private(&dir.join("sa.key"), &key.private_key_to_pem()?)?;

        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
        server.url = format!("https://127.0.0.1:{secure}");
        let log = |name: &str| -> anyhow::Result<Stdio> {
            Ok(std::fs::File::create(dir.join(format!("{name}.log")))?.into())
        };
        let etcd = Command::new(&bins.etcd)
            .arg("--data-dir")
            .arg(dir.join("etcd"))
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
        server.children.push(etcd);
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
            .arg(dir.join("certs"))
            .arg("--token-auth-file")
            .arg(dir.join("tokens.csv"))
            .arg("--service-account-key-file")
            .arg(dir.join("sa.key"))
            .arg("--service-account-signing-key-file")
            .arg(dir.join("sa.key"))
            .stdout(log("kube-apiserver")?)
            .stderr(log("kube-apiserver")?)
            .spawn()
            .with_context(|| format!("start {}", bins.kube_apiserver.display()))?;
        server.children.push(apiserver);

        // The serving certificate is self-signed and written once the server starts.
        let started = Instant::now();
        let ca = dir.join("certs/apiserver.crt");
        loop {
            if ca.is_file() {
                let mut kubeconfig = format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://127.0.0.1:{secure}\n    certificate-authority: {}\nusers:\n- name: lab-admin\n  user:\n    token: {token}\ncurrent-context: {}\ncontexts:\n",
                    ca.display(),
                    contexts[0]
                );
                for c in contexts {
                    kubeconfig += &format!(
                        "- name: {c}\n  context:\n    cluster: lab\n    user: lab-admin\n"
                    );
                }
                let _ = std::fs::remove_file(&server.kubeconfig);
                write_private(&server.kubeconfig, kubeconfig.as_bytes())?;
                let ready = server
                    .kubectl()
                    .args(["get", "--raw", "/readyz"])
                    .output()?;
                if ready.status.success() {
                    return Ok(server);
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                anyhow::bail!(
                    "kube-apiserver was not ready in 60 s; its log ends:\n{}",
                    server.log_tail("kube-apiserver")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// kubectl, with this server's kubeconfig and context.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig)
            .args(["--context", &self.contexts[0]]);
        c
    }

    /// A kubeconfig for this server that authenticates with `token` (a service account's, say).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: user\ncurrent-context: lab\n",
            self.url,
            self.ca.display()
        )
    }

    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The API server first, then its etcd.
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
