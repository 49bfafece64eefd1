//! What `cargo xtask up` does on Kubernetes, as a plan of steps built from the pins and
//! `manifests/`: printed by `--dry-run`, run step by step otherwise, and checked without a
//! cluster by `checks` (its kubectl steps against a real API server, its kind commands against
//! the pinned kind CLI, its registration against a real SPIRE server).

use std::fmt;

use contract::{NAMESPACE, Workload};

use crate::pins::{PinnedImages, Pins};
use crate::spire::Entry;

/// One step: what it does, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub action: Action,
    /// Run only when the cluster does not exist yet.
    pub only_if_new_cluster: bool,
    /// Failure messages that mean the step was done by an earlier `up`.
    pub already_done: &'static [&'static str],
}

/// How a step is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A command (kind, docker, kubectl, mkdir).
    Command(Vec<String>),
    /// xtask builds the flake's image (`nix build` of a `streamLayeredImage`) and pipes the
    /// archive it streams into `docker load`.
    NixImageLoad { attr: String, image: String },
    /// xtask writes a kustomize overlay of `manifests/` whose services' images come from the
    /// registry they were pushed to.
    WriteRegistryOverlay { dir: String, registry: String },
    /// xtask builds every image into the Docker engine with no registry (`cargo xtask images`).
    BuildImages,
    /// xtask writes kind's cluster config for the offline node image: `manifests/kind/cluster.yaml`
    /// with kind's default CNI left out (it cannot be built offline).
    WriteOfflineClusterConfig { path: String },
    /// xtask sets the pod network up on every node (`network.rs`).
    PodNetwork { context: String },
    /// xtask writes a kustomize overlay of `manifests/` with the offline path's CSI registrar.
    WriteOfflineOverlay { dir: String },
    /// xtask makes the Secrets of the SPIRE servers' datastore (`spire-db`: its password;
    /// `spire-db-tls`: its certificate, key and CA) and of the OIDC discovery provider
    /// (`spire-oidc-tls`, and its CA for OpenBao) unless they exist.
    DatastoreSecrets { context: String },
    /// xtask initializes OpenBao (the first time), unseals it and runs `configure.sh` in its
    /// pod, then waits for it to be ready.
    OpenBao { context: String },
}

impl Step {
    /// The command's arguments (empty for xtask's own steps).
    pub fn argv(&self) -> &[String] {
        match &self.action {
            Action::Command(argv) => argv,
            _ => &[],
        }
    }

    /// A command step whose program is `program`.
    pub fn runs(&self, program: &str) -> bool {
        self.argv().first().is_some_and(|p| p == program)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::Command(argv) => {
                let quoted: Vec<String> = argv
                    .iter()
                    .map(|a| {
                        if a.contains(' ') || a.is_empty() {
                            format!("'{a}'")
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                write!(f, "$ {}", quoted.join(" "))
            }
            Action::NixImageLoad { attr, image } => write!(
                f,
                "xtask: nix build {attr}, its image archive into docker load ({image})"
            ),
            Action::WriteRegistryOverlay { dir, registry } => write!(
                f,
                "xtask: write {dir}/kustomization.yaml (manifests/, the services' images from {registry})"
            ),
            Action::BuildImages => write!(
                f,
                "xtask: cargo xtask images (every image, no registry; up to date ones are kept)"
            ),
            Action::WriteOfflineClusterConfig { path } => write!(
                f,
                "xtask: write {path} (manifests/kind/cluster.yaml with disableDefaultCNI)"
            ),
            Action::WriteOfflineOverlay { dir } => write!(
                f,
                "xtask: write {dir}/kustomization.yaml (manifests/, the lab's own CSI registrar)"
            ),
            Action::PodNetwork { context } => write!(
                f,
                "xtask: the pod network of {context} (ptp and a route per node, inside the nodes)"
            ),
            Action::DatastoreSecrets { context } => write!(
                f,
                "xtask: unless they exist, Secrets spire-system/spire-db (a new password), spire-db-tls and spire-oidc-tls (new certificates) and ConfigMap demo/spire-oidc-ca in {context}, through kubectl apply"
            ),
            Action::OpenBao { context } => write!(
                f,
                "xtask: in {context}, OpenBao initialized (its unseal key and root token to .lab/kind/openbao-init.json, 0600), unsealed and configured (configure.sh through kubectl exec, the token on stdin)"
            ),
        }
    }
}

fn command(what: &str, argv: &[&str]) -> Step {
    Step {
        what: what.into(),
        action: Action::Command(argv.iter().map(|s| s.to_string()).collect()),
        only_if_new_cluster: false,
        already_done: &[],
    }
}

/// How the images are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageBuild {
    /// The services with the flake's `dockerTools.streamLayeredImage`; the rest pulled.
    Nix,
    /// The services with `manifests/images/Dockerfile`, built inside Docker; the rest pulled.
    Dockerfile,
    /// Every image, the kind node's included, built by xtask with no registry
    /// (`cargo xtask images`): the offline path.
    Offline,
}

/// Where the lab goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The kind cluster `spire-demo`, created when absent; images side-loaded with `kind load`.
    Kind,
    /// An existing cluster (a kubeconfig context); the services' images pushed to a registry.
    Existing { context: String, registry: String },
}

pub const CONTEXT_PREFIX: &str = "kind-";
/// Every agent of the cluster gets this alias; workload entries hang below it.
pub const CLUSTER_ALIAS: &str = "spiffe://example.org/k8s-cluster/spire-demo";
/// Where `up --context … --registry …` keeps its overlay of `manifests/` (not committed).
pub const REGISTRY_OVERLAY: &str = ".lab/registry-overlay";
/// Where the offline path keeps its overlay of `manifests/`: the CSI registrar it builds in
/// place of the upstream one (written by `up`, not committed).
pub const OFFLINE_OVERLAY: &str = ".lab/offline-overlay";
/// kind's cluster config for the offline node image (written by `up`, not committed).
pub const OFFLINE_CLUSTER_CONFIG: &str = ".lab/kind/cluster-offline.yaml";
/// The third-party images, saved for the nodes' platform (not committed).
const THIRD_PARTY_ARCHIVE: &str = ".lab/images/third-party.tar";
/// A registration step's failure that means the entry exists already.
const REGISTERED: &[&str] = &["AlreadyExists", "similar entry already exists"];

/// `kubectl` arguments that run the SPIRE server's CLI inside its pod.
pub const SERVER_CLI: [&str; 8] = [
    "-n",
    "spire-system",
    "exec",
    "spire-server-0",
    "-c",
    "spire-server",
    "--",
    "/opt/spire/bin/spire-server",
];

/// `kubectl` arguments for `spire-server ARGS…` in its pod.
pub fn server_cli<'a>(args: &[&'a str]) -> Vec<&'a str> {
    SERVER_CLI
        .iter()
        .copied()
        .chain(args.iter().copied())
        .collect()
}

/// The workloads' registration entries on Kubernetes: below the cluster's alias, selected by
/// namespace and service account.
pub fn registrations() -> Vec<Entry> {
    Workload::ALL
        .into_iter()
        .map(|w| Entry::workload(w, CLUSTER_ALIAS, account_selectors(w.service_account())))
        .chain([Entry {
            spiffe_id: contract::ids::OIDC_PROVIDER_ID.into(),
            parent_id: CLUSTER_ALIAS.into(),
            selectors: vec!["k8s:ns:spire-system".into(), "k8s:sa:spire-oidc".into()],
            dns: None,
        }])
        .collect()
}

/// The k8s workload attestor's selectors for a service account of the demo namespace.
pub fn account_selectors(service_account: &str) -> Vec<String> {
    vec![
        format!("k8s:ns:{NAMESPACE}"),
        format!("k8s:sa:{service_account}"),
    ]
}

/// The kind nodes' platform: this machine's (Docker runs them natively).
fn node_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Where an image goes in a registry: `REGISTRY/name:tag`.
pub fn pushed(image: &str, registry: &str) -> String {
    format!("{registry}/{}", image.rsplit('/').next().unwrap_or(image))
}

/// The overlay of `manifests/` with the CSI registrar the offline path builds (the upstream
/// one's module is refused by the Go module proxy).
pub fn offline_overlay(pins: &Pins) -> String {
    let upstream = &pins.spiffe_csi_driver.registrar_image;
    let upstream = upstream
        .rsplit_once(':')
        .map_or(upstream.as_str(), |(n, _)| n);
    let own = &pins.kind_offline.registrar_image;
    let (name, tag) = own.rsplit_once(':').unwrap_or((own, "latest"));
    format!(
        "# Written by `cargo xtask up --runtime kind --offline`: the lab's manifests, with the CSI\n# registrar the offline path builds (xtask/kind-node) in place of the upstream one.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../manifests\nimages:\n- name: {upstream}\n  newName: {name}\n  newTag: \"{tag}\"\n"
    )
}

/// The overlay of `manifests/` whose services' images come from `registry`.
pub fn registry_overlay(pins: &Pins, registry: &str) -> String {
    let mut yaml = String::from(
        "# Written by `cargo xtask up --context … --registry …`: the lab's manifests, with the\n# services' images from the registry they were pushed to.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../manifests\nimages:\n",
    );
    for (_, image) in pins.services.all() {
        let name = image.rsplit_once(':').map_or(image, |(n, _)| n);
        let remote = pushed(name, registry);
        yaml += &format!("- name: {name}\n  newName: {remote}\n");
    }
    yaml
}

/// Everything `cargo xtask up` does, in order: the cluster, the images, the manifests, SPIRE,
/// registration, the workloads.
pub fn plan(pins: &Pins, build: ImageBuild, target: &Target) -> Vec<Step> {
    let context = match target {
        Target::Kind => format!("{CONTEXT_PREFIX}{}", pins.kind.cluster_name),
        Target::Existing { context, .. } => context.clone(),
    };
    let kubectl = Kubectl(&context);
    if build == ImageBuild::Offline {
        return [
            vec![Step {
                what: "every image, built with no registry".into(),
                action: Action::BuildImages,
                only_if_new_cluster: false,
                already_done: &[],
            }],
            offline_cluster(pins, &kubectl),
            vec![command(
                "load the lab's images into the cluster's nodes",
                &[
                    &[
                        "kind",
                        "load",
                        "docker-image",
                        "--name",
                        &pins.kind.cluster_name,
                    ][..],
                    &lab_images(pins),
                ]
                .concat(),
            )],
            vec![Step {
                what: "a kustomize overlay of the manifests with the lab's own CSI registrar"
                    .into(),
                action: Action::WriteOfflineOverlay {
                    dir: OFFLINE_OVERLAY.into(),
                },
                only_if_new_cluster: false,
                already_done: &[],
            }],
            manifests(target, &kubectl, OFFLINE_OVERLAY),
            datastore_secrets(&kubectl),
            rollouts(&kubectl, "spire-system", SPIRE_WORKLOADS),
            registration(&kubectl),
            rollouts(&kubectl, "spire-system", SPIRE_WORKLOADS_WITH_AN_ENTRY),
            rollouts(&kubectl, NAMESPACE, DEMO_WORKLOADS),
            openbao(&kubectl),
        ]
        .concat();
    }
    [
        cluster(pins, target),
        service_images(pins, build),
        image_delivery(pins, target),
        manifests(target, &kubectl, "manifests"),
        datastore_secrets(&kubectl),
        rollouts(&kubectl, "spire-system", SPIRE_WORKLOADS),
        registration(&kubectl),
        rollouts(&kubectl, "spire-system", SPIRE_WORKLOADS_WITH_AN_ENTRY),
        rollouts(&kubectl, NAMESPACE, DEMO_WORKLOADS),
        openbao(&kubectl),
    ]
    .concat()
}

/// OpenBao is ready only unsealed: xtask unseals and configures it, then waits for it.
fn openbao(kubectl: &Kubectl) -> Vec<Step> {
    vec![
        Step {
            what: "OpenBao: initialized, unsealed, configured (its keys kept outside the cluster)"
                .into(),
            action: Action::OpenBao {
                context: kubectl.0.to_owned(),
            },
            only_if_new_cluster: false,
            already_done: &[],
        },
        kubectl.step(
            "wait for openbao",
            &[
                "-n",
                NAMESPACE,
                "rollout",
                "status",
                "statefulset/openbao",
                "--timeout=180s",
            ],
        ),
    ]
}

/// `kubectl --context CONTEXT …` steps.
struct Kubectl<'a>(&'a str);

impl Kubectl<'_> {
    fn step(&self, what: &str, args: &[&str]) -> Step {
        let mut argv = vec!["kubectl", "--context", self.0];
        argv.extend_from_slice(args);
        command(what, &argv)
    }
}

fn cluster(pins: &Pins, target: &Target) -> Vec<Step> {
    if *target != Target::Kind {
        return vec![];
    }
    let create = [
        "kind",
        "create",
        "cluster",
        "--name",
        &pins.kind.cluster_name,
        "--config",
        "manifests/kind/cluster.yaml",
        "--wait",
        "120s",
    ];
    vec![Step {
        only_if_new_cluster: true,
        ..command("create the kind cluster", &create)
    }]
}

/// Every image the offline path loads into the nodes: what the manifests name, with the
/// offline CSI registrar in place of the upstream one.
pub fn lab_images(pins: &Pins) -> Vec<&str> {
    let mut images: Vec<&str> = pins
        .images()
        .iter()
        .filter(|i| i.name != "kind node" && i.name != "csi-registrar")
        .map(|i| i.reference)
        .collect();
    images.push(&pins.kind_offline.registrar_image);
    images.extend(services(pins).map(|(_, image)| image));
    images
}

/// The cluster from the offline node image, its pod network, and its nodes and DNS ready.
fn offline_cluster(pins: &Pins, kubectl: &Kubectl) -> Vec<Step> {
    let create = [
        "kind",
        "create",
        "cluster",
        "--name",
        &pins.kind.cluster_name,
        "--config",
        OFFLINE_CLUSTER_CONFIG,
        "--image",
        &pins.kind_offline.node_image,
    ];
    vec![
        Step {
            what: "kind's cluster config for the offline node image".into(),
            action: Action::WriteOfflineClusterConfig {
                path: OFFLINE_CLUSTER_CONFIG.into(),
            },
            only_if_new_cluster: true,
            already_done: &[],
        },
        Step {
            only_if_new_cluster: true,
            ..command(
                "create the kind cluster from the offline node image",
                &create,
            )
        },
        Step {
            what: "the pod network (kind's own is left out offline)".into(),
            action: Action::PodNetwork {
                context: kubectl.0.to_owned(),
            },
            only_if_new_cluster: false,
            already_done: &[],
        },
        kubectl.step(
            "wait for the nodes",
            &[
                "wait",
                "--for=condition=Ready",
                "nodes",
                "--all",
                "--timeout=180s",
            ],
        ),
        kubectl.step(
            "wait for the cluster's DNS",
            &[
                "-n",
                "kube-system",
                "rollout",
                "status",
                "deployment/coredns",
                "--timeout=180s",
            ],
        ),
    ]
}

fn service_images(pins: &Pins, build: ImageBuild) -> Vec<Step> {
    services(pins)
        .into_iter()
        .map(|(name, image)| match build {
            ImageBuild::Offline => unreachable!("the offline plan builds its own images"),
            ImageBuild::Nix => Step {
                what: format!("build {image} with Nix and load it into docker"),
                action: Action::NixImageLoad {
                    attr: format!(".#{name}-image"),
                    image: image.to_owned(),
                },
                only_if_new_cluster: false,
                already_done: &[],
            },
            ImageBuild::Dockerfile => command(
                &format!("build {image} with docker (no Nix here)"),
                &[
                    "docker",
                    "build",
                    "--target",
                    name,
                    "-t",
                    image,
                    "-f",
                    "manifests/images/Dockerfile",
                    ".",
                ],
            ),
        })
        .collect()
}

fn services(pins: &Pins) -> [(&'static str, &str); 3] {
    pins.services.all()
}

/// Into kind's nodes (side-loaded), or pushed to the existing cluster's registry.
fn image_delivery(pins: &Pins, target: &Target) -> Vec<Step> {
    let cluster = pins.kind.cluster_name.as_str();
    match target {
        Target::Kind => {
            let third: Vec<&str> = pins
                .images()
                .iter()
                .filter(|i| i.name != "kind node")
                .map(|i| i.reference)
                .collect();
            let platform = node_platform();
            let mut steps: Vec<Step> = third
                .iter()
                .map(|image| {
                    command(
                        &format!("pull {image}"),
                        &["docker", "pull", "--platform", &platform, image],
                    )
                })
                .collect();
            // One platform only, through an archive: `kind load docker-image` of a
            // multi-platform image fails with "content digest … not found" on Docker's
            // containerd image store (kind's documented workaround).
            steps.push(command(
                "a place for the image archive (not committed)",
                &["mkdir", "-p", ".lab/images"],
            ));
            let mut save = vec![
                "docker",
                "image",
                "save",
                "--platform",
                &platform,
                "-o",
                THIRD_PARTY_ARCHIVE,
            ];
            save.extend(&third);
            steps.push(command(
                &format!("save the third-party images for {platform}"),
                &save,
            ));
            steps.push(command(
                "load them into the cluster's nodes",
                &[
                    "kind",
                    "load",
                    "image-archive",
                    "--name",
                    cluster,
                    THIRD_PARTY_ARCHIVE,
                ],
            ));
            let load: Vec<&str> = ["kind", "load", "docker-image", "--name", cluster]
                .into_iter()
                .chain(pins.services.all().map(|(_, image)| image))
                .collect();
            steps.push(command(
                "load the services' images (built for this machine only)",
                &load,
            ));
            steps
        }
        Target::Existing { registry, .. } => services(pins)
            .into_iter()
            .flat_map(|(_, image)| {
                let remote = pushed(image, registry);
                [
                    command(
                        &format!("tag {image} for {registry}"),
                        &["docker", "tag", image, &remote],
                    ),
                    command(&format!("push {remote}"), &["docker", "push", &remote]),
                ]
            })
            .collect(),
    }
}

/// The manifests (through the registry overlay on an existing cluster).
fn manifests(target: &Target, kubectl: &Kubectl, base: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    match target {
        Target::Kind => steps.push(kubectl.step("apply the manifests", &["apply", "-k", base])),
        Target::Existing { registry, .. } => {
            // An overlay, not `kubectl set image` after the apply: every later `up` would set
            // the base's image back first, and roll the pods out twice.
            steps.push(Step {
                what: format!(
                    "a kustomize overlay of the manifests with the services' images from {registry}"
                ),
                action: Action::WriteRegistryOverlay {
                    dir: REGISTRY_OVERLAY.into(),
                    registry: registry.clone(),
                },
                only_if_new_cluster: false,
                already_done: &[],
            });
            steps.push(kubectl.step(
                "apply the manifests, through that overlay",
                &["apply", "-k", REGISTRY_OVERLAY],
            ));
        }
    }
    steps
}

/// The datastore's Secrets, after the manifests (their namespace) and before the rollouts (its
/// pods and the servers' wait for them).
fn datastore_secrets(kubectl: &Kubectl) -> Vec<Step> {
    vec![Step {
        what: "the datastore's password and certificate (made here, never in the repository)"
            .into(),
        action: Action::DatastoreSecrets {
            context: kubectl.0.to_owned(),
        },
        only_if_new_cluster: false,
        already_done: &[],
    }]
}

const SPIRE_WORKLOADS: &[(&str, &str)] = &[
    ("statefulset", "spire-db"),
    ("statefulset", "spire-server"),
    ("daemonset", "spire-agent"),
    ("daemonset", "spiffe-csi-driver"),
];
/// SPIRE's own workloads that need a registration entry before they can be ready.
const SPIRE_WORKLOADS_WITH_AN_ENTRY: &[(&str, &str)] = &[("deployment", "spire-oidc")];
const DEMO_WORKLOADS: &[(&str, &str)] = &[
    ("statefulset", "postgres"),
    ("deployment", "backend"),
    ("deployment", "frontend"),
    ("deployment", "ledger"),
];

fn rollouts(kubectl: &Kubectl, ns: &str, workloads: &[(&str, &str)]) -> Vec<Step> {
    workloads
        .iter()
        .map(|(kind, name)| {
            kubectl.step(
                &format!("wait for {name}"),
                &[
                    "-n",
                    ns,
                    "rollout",
                    "status",
                    &format!("{kind}/{name}"),
                    "--timeout=180s",
                ],
            )
        })
        .collect()
}

/// The cluster's agents under one alias, then each workload below it.
fn registration(kubectl: &Kubectl) -> Vec<Step> {
    let mut alias = server_cli(&["entry", "create"]);
    alias.extend([
        "-node",
        "-spiffeID",
        CLUSTER_ALIAS,
        "-selector",
        "k8s_psat:cluster:spire-demo",
    ]);
    let mut steps = vec![Step {
        already_done: REGISTERED,
        ..kubectl.step("register the cluster's agents under one alias", &alias)
    }];
    for e in registrations() {
        let args = e.args(None);
        let mut argv = server_cli(&["entry", "create"]);
        argv.extend(args.iter().map(String::as_str));
        steps.push(Step {
            already_done: REGISTERED,
            ..kubectl.step(&format!("register {}", e.spiffe_id), &argv)
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dry-run plan: cluster, images, namespaces and Secret before the manifests, the SPIRE
    /// rollouts before registration, registration before the workloads are awaited.
    #[test]
    fn up_dry_run_plan_is_complete_and_ordered() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let plan = plan(&pins, ImageBuild::Nix, &Target::Kind);
        let lines: Vec<String> = plan.iter().map(|s| s.to_string()).collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no step `{needle}` in:\n{}", lines.join("\n")))
        };
        assert!(plan[0].only_if_new_cluster);
        assert_eq!(
            lines[0],
            "$ kind create cluster --name spire-demo --config manifests/kind/cluster.yaml --wait 120s"
        );
        let load = at("kind load docker-image");
        for (_, image) in pins.services.all() {
            assert!(lines[load].contains(image), "{image} is not loaded");
        }
        // Third-party images: pulled and saved for one platform, loaded from the archive.
        let save = at("docker image save --platform linux/");
        for image in [
            &pins.envoy.image,
            &pins.spire.server_image,
            &pins.spire.agent_image,
        ] {
            assert!(at("docker pull --platform linux/") < save);
            assert!(lines[save].contains(image.as_str()), "{image} is not saved");
        }
        assert!(!lines[save].contains("kindest/node"));
        assert!(at("mkdir -p .lab/images") < save);
        assert!(save < at("kind load image-archive --name spire-demo .lab/images/third-party.tar"));
        assert!(at("xtask: nix build .#frontend-image") < load);
        assert!(at("kind load docker-image") < at("apply -k manifests"));
        assert!(at("rollout status statefulset/spire-server") < at("-node -spiffeID"));
        for e in registrations() {
            assert!(
                at(&format!("-spiffeID {}", e.spiffe_id))
                    < at("rollout status deployment/frontend")
            );
        }
        assert!(at("-spiffeID spiffe://example.org/ns/demo/sa/backend") > at("-node -spiffeID"));
        assert!(lines[at("sa/backend")].ends_with("-dns backend"));
        assert!(
            lines.iter().all(|l| !l.contains("secret")),
            "a secret in the plan"
        );
        assert!(
            plan.iter()
                .filter(|s| s.runs("kubectl"))
                .all(|s| s.argv()[1..3] == ["--context", "kind-spire-demo"])
        );

        // Without Nix, the same images come from the Dockerfile, whose bases are pinned.
        let docker = super::plan(&pins, ImageBuild::Dockerfile, &Target::Kind);
        let built: Vec<String> = docker
            .iter()
            .map(|s| s.to_string())
            .filter(|l| l.starts_with("$ docker build"))
            .collect();
        assert_eq!(built.len(), pins.services.all().len());
        assert!(built[0].contains(&format!("-t {}", pins.services.frontend_image)));
        let dockerfile =
            std::fs::read_to_string(crate::project_root().join("manifests/images/Dockerfile"))
                .unwrap();
        let froms: Vec<&str> = dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix("FROM "))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert!(
            froms.contains(&pins.services.build_image.as_str())
                && froms.contains(&pins.services.runtime_image.as_str()),
            "{froms:?}"
        );
        assert_eq!(docker.len(), plan.len());

        // An existing cluster: no kind, the services pushed to the registry and set on the pods.
        let target = Target::Existing {
            context: "prod-eu".into(),
            registry: "registry.example.com/lab".into(),
        };
        let existing = super::plan(&pins, ImageBuild::Nix, &target);
        let lines: Vec<String> = existing.iter().map(|s| s.to_string()).collect();
        assert!(existing.iter().all(|s| !s.runs("kind")), "{lines:?}");
        assert!(
            lines.contains(&"$ docker push registry.example.com/lab/frontend:0.1.0".to_owned()),
            "{lines:?}"
        );
        assert!(
            existing
                .iter()
                .filter(|s| s.runs("kubectl"))
                .all(|s| s.argv()[1..3] == ["--context", "prod-eu"])
        );
        let overlay = existing
            .iter()
            .position(|s| {
                s.action
                    == Action::WriteRegistryOverlay {
                        dir: REGISTRY_OVERLAY.into(),
                        registry: "registry.example.com/lab".into(),
                    }
            })
            .unwrap();
        let apply = lines
            .iter()
            .position(|l| l.ends_with("apply -k .lab/registry-overlay"))
            .unwrap();
        assert!(overlay < apply);
        assert!(!lines.iter().any(|l| l.contains("apply -k manifests")));
        let yaml = registry_overlay(&pins, "registry.example.com/lab");
        assert!(
            yaml.contains(
                "- name: spire-lab/backend\n  newName: registry.example.com/lab/backend\n"
            ),
            "{yaml}"
        );
    }

    /// The offline plan: images built first, the cluster from the offline node image with its
    /// config written just before, the pod network before the nodes are awaited, every lab image
    /// loaded from the engine (the lab's own registrar, not the upstream one), the overlay that
    /// names it written before it is applied, and nothing pulled.
    #[test]
    fn offline_plan_is_complete_and_ordered() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let plan = plan(&pins, ImageBuild::Offline, &Target::Kind);
        let at = |f: &dyn Fn(&Step) -> bool| {
            plan.iter()
                .position(f)
                .unwrap_or_else(|| panic!("{:#?}", plan))
        };
        assert_eq!(plan[0].action, Action::BuildImages);
        let config = at(&|s| matches!(s.action, Action::WriteOfflineClusterConfig { .. }));
        let create = at(&|s| s.argv().starts_with(&["kind".into(), "create".into()]));
        assert!(config < create && plan[create].only_if_new_cluster);
        let argv = plan[create].argv().join(" ");
        assert!(
            argv.contains(&format!("--image {}", pins.kind_offline.node_image)),
            "{argv}"
        );
        assert!(
            argv.contains(&format!("--config {OFFLINE_CLUSTER_CONFIG}")),
            "{argv}"
        );
        let network = at(&|s| matches!(s.action, Action::PodNetwork { .. }));
        let nodes = at(&|s| s.argv().iter().any(|a| a == "--for=condition=Ready"));
        assert!(create < network && network < nodes);
        let load = at(&|s| {
            s.argv()
                .starts_with(&["kind".into(), "load".into(), "docker-image".into()])
        });
        let loaded = plan[load].argv();
        assert!(loaded.contains(&pins.kind_offline.registrar_image));
        assert!(!loaded.contains(&pins.spiffe_csi_driver.registrar_image));
        for image in [
            &pins.services.backend_image,
            &pins.postgres.image,
            &pins.envoy.image,
        ] {
            assert!(loaded.contains(image), "{image} is not loaded");
        }
        let overlay = at(&|s| matches!(s.action, Action::WriteOfflineOverlay { .. }));
        let apply = at(&|s| s.argv().ends_with(&["-k".into(), OFFLINE_OVERLAY.into()]));
        assert!(load < apply && overlay < apply);
        assert!(
            plan.iter().all(|s| !s.runs("docker")),
            "the offline plan pulls nothing"
        );
        let yaml = offline_overlay(&pins);
        assert!(
            yaml.contains("- name: registry.k8s.io/sig-storage/csi-node-driver-registrar\n  newName: spire-lab/csi-node-driver-registrar\n  newTag: \"0.1.0\"\n"),
            "{yaml}"
        );
    }
}
