//! The Kubernetes manifests, checked without a cluster: rendered by the pinned kustomize,
//! validated against the pinned Kubernetes release's OpenAPI schemas and PodSecurity, their Envoy
//! and SPIRE configs validated by the real binaries exactly as mounted, and the lab's invariants.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::pins::PinnedImages;
use xshell::{Shell, cmd};

/// Renders the manifests and checks them without a cluster: the Kubernetes schemas, then the
/// Envoy and SPIRE configs with the real binaries, exactly as mounted.
pub fn check(sh: &Shell, kube: &crate::deps::KubeTools) -> anyhow::Result<()> {
    let pins = crate::pins::Pins::load(&crate::project_root())?;
    let tools = crate::deps::find(&pins)?;
    let mut objects = render(sh, &kube.kustomize)?;
    let scenario = scenario_objects()?;
    println!(
        "rendered {} objects with kustomize {}, and {} the scenarios apply",
        objects.len(),
        pins.kind.kustomize,
        scenario.len()
    );
    objects.extend(scenario);
    let schemas = Schemas::load(&kube.openapi)?;
    let violations: Vec<String> = objects.iter().flat_map(|o| schemas.violations(o)).collect();
    anyhow::ensure!(
        violations.is_empty(),
        "schema violations:\n{}",
        violations.join("\n")
    );
    println!(
        "every object validates against the Kubernetes {} schemas (strict)",
        pins.kind.kubernetes_openapi
    );
    let mut pinned: Vec<&str> = pins.images().iter().map(|i| i.reference).collect();
    pinned.extend(pins.services.all().map(|(_, image)| image));
    let unpinned: Vec<String> = images(&objects)
        .into_iter()
        .filter(|(image, _)| !pinned.contains(&image.as_str()))
        .map(|(image, place)| format!("{place}: {image}"))
        .collect();
    anyhow::ensure!(
        unpinned.is_empty(),
        "images not in nix/pins.json:\n{}",
        unpinned.join("\n")
    );
    println!("every image is pinned in nix/pins.json");
    let verdicts = pod_security(&kube.psa_check, &objects)?;
    let refused: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.allowed)
        .map(|v| format!("{} ({}): {}", v.object, v.level, v.forbidden.join("; ")))
        .collect();
    anyhow::ensure!(
        refused.is_empty(),
        "Pod Security admission would refuse:\n{}",
        refused.join("\n")
    );
    println!(
        "all {} pods pass their namespace's Pod Security level (k8s.io/pod-security-admission {})",
        verdicts.len(),
        pins.kind.kubernetes_openapi
    );
    let data = |map: &str, key: &str| -> anyhow::Result<String> {
        config_map(&objects, map)?[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{map} has no {key}"))
    };
    validate_envoy_as_mounted(
        sh,
        &tools.envoy,
        &data("frontend-envoy", "envoy.yaml")?,
        None,
    )?;
    validate_envoy_as_mounted(
        sh,
        &tools.envoy,
        &data("backend-envoy", "envoy.yaml")?,
        Some(&data("backend-rbac", "rbac.yaml")?),
    )?;
    println!("both Envoy bootstraps pass `envoy --mode validate` as mounted");
    let scratch = tempdir("spire-mounted")?;
    let dir = scratch.path();
    for (map, key, program) in [
        ("spire-server", "server.conf", &tools.spire_server),
        ("spire-agent", "agent.conf", &tools.spire_agent),
    ] {
        let path = dir.join(key);
        std::fs::write(&path, data(map, key)?)?;
        let out = std::process::Command::new(program)
            .arg("validate")
            .arg("-config")
            .arg(&path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("the SPIRE server and agent configs pass `validate`");
    Ok(())
}

/// `kustomize build manifests`: every object, as JSON.
pub fn render(sh: &Shell, kustomize: &Path) -> anyhow::Result<Vec<Value>> {
    let manifests = crate::project_root().join("manifests");
    let yaml = cmd!(sh, "{kustomize} build {manifests}")
        .quiet()
        .read()
        .context("kustomize build manifests")?;
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let v = Value::deserialize(doc).context("kustomize printed YAML that does not parse")?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

/// A short name for messages: `Deployment demo/backend`.
pub fn describe(o: &Value) -> String {
    let ns = o["metadata"]["namespace"]
        .as_str()
        .map(|n| format!("{n}/"))
        .unwrap_or_default();
    format!(
        "{} {ns}{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The schemas of one Kubernetes release, from its OpenAPI v2 document, made strict: an object
/// with declared properties accepts no others, so a misspelt field is an error.
pub struct Schemas {
    root: Value,
    by_kind: BTreeMap<(String, String, String), String>,
}

impl Schemas {
    pub fn load(openapi: &Path) -> anyhow::Result<Schemas> {
        let doc: Value = serde_json::from_slice(&std::fs::read(openapi)?)
            .context("parse the OpenAPI document")?;
        let mut defs = doc["definitions"]
            .as_object()
            .context("no definitions")?
            .clone();
        let mut by_kind = BTreeMap::new();
        for (name, def) in defs.iter_mut() {
            for gvk in def["x-kubernetes-group-version-kind"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let s = |k: &str| gvk[k].as_str().unwrap_or_default().to_owned();
                by_kind.insert((s("group"), s("version"), s("kind")), name.clone());
            }
            strict(def);
        }
        // Kubernetes encodes these as strings with a format; YAML gives numbers too.
        for name in [
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
        ] {
            defs.insert(
                name.into(),
                json!({ "type": ["string", "integer", "number"] }),
            );
        }
        Ok(Schemas {
            root: json!({ "definitions": defs }),
            by_kind,
        })
    }

    /// Every schema violation of one object; an unknown kind is one too.
    pub fn violations(&self, o: &Value) -> Vec<String> {
        let api = o["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
        let kind = o["kind"].as_str().unwrap_or_default().to_owned();
        let Some(def) = self
            .by_kind
            .get(&(group.to_owned(), version.to_owned(), kind.clone()))
        else {
            return vec![format!(
                "{}: no schema for {api} {kind} in this Kubernetes release",
                describe(o)
            )];
        };
        let mut schema = self.root.clone();
        schema["$ref"] = json!(format!("#/definitions/{def}"));
        let validator = match jsonschema::validator_for(&schema) {
            Ok(v) => v,
            Err(e) => return vec![format!("{}: the schema does not compile: {e}", describe(o))],
        };
        validator
            .iter_errors(o)
            .map(|e| format!("{} at {}: {e}", describe(o), e.instance_path()))
            .collect()
    }
}

fn strict(def: &mut Value) {
    match def {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            // Swagger 2.0's vendor keys mean nothing to a JSON Schema validator.
            map.retain(|k, _| !k.starts_with("x-kubernetes-"));
            for v in map.values_mut() {
                strict(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// The pod spec of a Pod, or of a workload's pod template.
pub fn pod_spec(o: &Value) -> Option<&Value> {
    if o["kind"] == "Pod" {
        Some(&o["spec"])
    } else {
        let spec = &o["spec"]["template"]["spec"];
        spec.is_object().then_some(spec)
    }
}

/// The objects scenarios apply and delete themselves (`manifests/scenarios/`), never `up`.
pub fn scenario_objects() -> anyhow::Result<Vec<Value>> {
    let dir = crate::project_root().join("manifests/scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let mut objects = Vec::new();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let yaml = std::fs::read_to_string(path)?;
        for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
            let v = Value::deserialize(doc).with_context(|| format!("parse {}", path.display()))?;
            if !v.is_null() {
                objects.push(v);
            }
        }
    }
    Ok(objects)
}

/// Every container image the manifests use, with where it appears.
pub fn images(objects: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for o in objects {
        let Some(spec) = pod_spec(o) else { continue };
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                if let Some(image) = c["image"].as_str() {
                    out.push((
                        image.to_owned(),
                        format!("{} {}", describe(o), c["name"].as_str().unwrap_or("?")),
                    ));
                }
            }
        }
    }
    out
}

/// What the PodSecurity admission of the pinned release decides about one pod.
#[derive(Debug, Deserialize)]
pub struct PodSecurityVerdict {
    pub object: String,
    pub level: String,
    pub allowed: bool,
    pub forbidden: Vec<String>,
}

/// Runs every pod (and pod template) through the PodSecurity admission checks (`xtask/psa`, the
/// kube-apiserver's own code) at the level its namespace enforces. A pod in a namespace without
/// an enforce label, or in a namespace these objects do not define, is an error: its fate
/// would depend on the cluster.
pub fn pod_security(
    psa_check: &Path,
    objects: &[Value],
) -> anyhow::Result<Vec<PodSecurityVerdict>> {
    let mut levels = BTreeMap::new();
    for ns in objects.iter().filter(|o| o["kind"] == "Namespace") {
        let labels = &ns["metadata"]["labels"];
        if let Some(level) = labels["pod-security.kubernetes.io/enforce"].as_str() {
            let version = labels["pod-security.kubernetes.io/enforce-version"]
                .as_str()
                .unwrap_or("latest");
            levels.insert(
                ns["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                (level.to_owned(), version.to_owned()),
            );
        }
    }
    let mut requests = Vec::new();
    for o in objects {
        let Some(spec) = pod_spec(o) else { continue };
        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
        let (level, version) = levels.get(ns).with_context(|| {
            format!(
                "{}: its namespace {ns:?} sets no pod-security.kubernetes.io/enforce label here",
                describe(o)
            )
        })?;
        let metadata = if o["kind"] == "Pod" {
            o["metadata"].clone()
        } else {
            o["spec"]["template"]["metadata"].clone()
        };
        requests.push(json!({
            "object": describe(o),
            "level": level,
            "version": version,
            "metadata": metadata,
            "spec": spec,
        }));
    }
    let mut child = std::process::Command::new(psa_check)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", psa_check.display()))?;
    let input = serde_json::to_vec(&requests)?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output()?;
    writer.join().expect("writer thread")?;
    anyhow::ensure!(
        out.status.success(),
        "psa-check: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let verdicts: Vec<PodSecurityVerdict> =
        serde_json::from_slice(&out.stdout).context("psa-check printed no verdicts")?;
    anyhow::ensure!(
        verdicts.len() == requests.len(),
        "psa-check answered {} of {} pods",
        verdicts.len(),
        requests.len()
    );
    Ok(verdicts)
}

/// The data of the generated ConfigMap whose name starts with `prefix` (kustomize adds a hash).
pub fn config_map<'a>(
    objects: &'a [Value],
    prefix: &str,
) -> anyhow::Result<&'a serde_json::Map<String, Value>> {
    objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
        })
        .and_then(|o| o["data"].as_object())
        .with_context(|| format!("no ConfigMap {prefix}"))
}

/// `envoy --mode validate` on an Envoy bootstrap exactly where its pod mounts it: inside a
/// private mount namespace, /etc is an empty tmpfs holding /etc/envoy/envoy.yaml and, for the
/// backend, /etc/envoy/rbac/rbac.yaml. The host's /etc is not touched.
pub fn validate_envoy_as_mounted(
    sh: &Shell,
    envoy: &Path,
    bootstrap: &str,
    rbac: Option<&str>,
) -> anyhow::Result<String> {
    let scratch = tempdir("envoy-mounted")?;
    let dir = scratch.path();
    std::fs::write(dir.join("envoy.yaml"), bootstrap)?;
    let mut script = format!(
        "set -e; mount -t tmpfs tmpfs /etc; mkdir -p /etc/envoy/rbac; cp '{d}/envoy.yaml' /etc/envoy/envoy.yaml;",
        d = dir.display()
    );
    if let Some(rbac) = rbac {
        std::fs::write(dir.join("rbac.yaml"), rbac)?;
        script += &format!(
            " cp '{}/rbac.yaml' /etc/envoy/rbac/rbac.yaml;",
            dir.display()
        );
    }
    script += &format!(
        " exec '{}' --mode validate -c /etc/envoy/envoy.yaml",
        envoy.display()
    );
    // As root the namespace needs no more; otherwise map ourselves to root in a user namespace.
    let user_ns: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &[]
    } else {
        &["--map-root-user"]
    };
    let out = cmd!(
        sh,
        "unshare --mount --propagation private {user_ns...} sh -c {script}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let text = crate::procs::printed(&out);
    if !out.status.success() {
        bail!("envoy --mode validate failed:\n{text}");
    }
    text.lines()
        .find(|l| l.contains("configuration '/etc/envoy/envoy.yaml' OK"))
        .map(str::to_owned)
        .with_context(|| format!("envoy did not say OK:\n{text}"))
}

/// A private scratch directory, removed when dropped.
fn tempdir(name: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("spire-lab-{name}-"))
        .tempdir()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pins::Pins;

    fn rendered() -> (Shell, crate::deps::KubeTools, Vec<Value>) {
        let sh = Shell::new().unwrap();
        let pins = Pins::load(&crate::project_root()).unwrap();
        let kube = crate::deps::find_kube(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let objects = render(&sh, &kube.kustomize).unwrap_or_else(|e| panic!("{e:#}"));
        (sh, kube, objects)
    }

    /// Every rendered object validates against Kubernetes' own (strict) schemas.
    #[test]
    fn manifests_validate_against_the_kubernetes_schemas() {
        let (_, kube, objects) = rendered();
        let schemas = Schemas::load(&kube.openapi).unwrap();
        let scenario = scenario_objects().unwrap();
        let violations: Vec<String> = objects
            .iter()
            .chain(&scenario)
            .flat_map(|o| schemas.violations(o))
            .collect();
        assert!(violations.is_empty(), "{}", violations.join("\n"));
        assert!(
            objects.len() > 20,
            "only {} objects rendered",
            objects.len()
        );

        // The validator does catch mistakes: a misspelt field and a wrong type.
        let mut broken = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .unwrap()
            .clone();
        broken["spec"]["replicaz"] = json!(1);
        broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
            json!("eighty");
        let found = schemas.violations(&broken);
        assert!(found.len() >= 2, "{found:?}");
    }

    /// The Envoy bootstraps pass `envoy --mode validate` exactly as their pods mount them, and
    /// the SPIRE configs pass `spire-server validate` / `spire-agent validate`.
    #[test]
    fn mounted_envoy_and_spire_configs_validate() {
        let (sh, kube, objects) = rendered();
        check(&sh, &kube).unwrap_or_else(|e| panic!("{e:#}"));
        // Without its policy file the backend's bootstrap is refused: the check is real.
        let pins = Pins::load(&crate::project_root()).unwrap();
        let tools = crate::deps::find(&pins).unwrap();
        let backend = config_map(&objects, "backend-envoy").unwrap()["envoy.yaml"]
            .as_str()
            .unwrap();
        assert!(validate_envoy_as_mounted(&sh, &tools.envoy, backend, None).is_err());
    }

    /// Every pod passes the PodSecurity admission of its namespace (restricted in `demo`), as
    /// the kube-apiserver's own checks decide; and the checks are real: a pod that joins the
    /// host's network or may run as root is refused.
    #[test]
    fn pods_pass_pod_security_admission() {
        let (_, kube, objects) = rendered();
        let objects: Vec<Value> = objects
            .into_iter()
            .chain(scenario_objects().unwrap())
            .collect();
        let verdicts = pod_security(&kube.psa_check, &objects).unwrap();
        let refused: Vec<_> = verdicts.iter().filter(|v| !v.allowed).collect();
        assert!(refused.is_empty(), "{refused:#?}");
        let in_demo: Vec<&str> = verdicts
            .iter()
            .filter(|v| v.level == "restricted")
            .map(|v| v.object.as_str())
            .collect();
        for pod in [
            "Deployment demo/frontend",
            "Deployment demo/backend",
            "StatefulSet demo/postgres",
            "Pod demo/rogue",
        ] {
            assert!(
                in_demo.contains(&pod),
                "{pod} not checked as restricted: {in_demo:?}"
            );
        }

        let backend = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "backend")
            .unwrap();
        let mut host_network = backend.clone();
        host_network["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        let mut root = backend.clone();
        root["spec"]["template"]["spec"]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("runAsNonRoot");
        let namespaces = objects.iter().filter(|o| o["kind"] == "Namespace").cloned();
        let broken: Vec<Value> = namespaces.chain([host_network, root]).collect();
        let verdicts = pod_security(&kube.psa_check, &broken).unwrap();
        assert_eq!(verdicts.len(), 2);
        assert!(
            verdicts[0]
                .forbidden
                .iter()
                .any(|f| f.contains("host namespaces")),
            "{verdicts:#?}"
        );
        assert!(
            verdicts[1]
                .forbidden
                .iter()
                .any(|f| f.contains("runAsNonRoot")),
            "{verdicts:#?}"
        );

        // The checker is built from the module of the pinned Kubernetes release.
        let pins = Pins::load(&crate::project_root()).unwrap();
        let go_mod =
            std::fs::read_to_string(crate::project_root().join("xtask/psa/go.mod")).unwrap();
        let minor_patch = pins.kind.kubernetes_openapi.strip_prefix("1.").unwrap();
        assert!(
            go_mod.contains(&format!("k8s.io/pod-security-admission v0.{minor_patch}\n")),
            "xtask/psa/go.mod does not require k8s.io/pod-security-admission v0.{minor_patch}"
        );
    }

    /// The Workload API socket's path from the agent to every workload, hop by hop: the agent's
    /// `socket_path` lies in a hostPath directory that the SPIFFE CSI driver mounts and serves
    /// (`-workload-api-socket-dir`); the registrar tells the kubelet where the driver's CSI
    /// socket is; every workload volume is an inline, read-only `csi.spiffe.io` volume (the driver
    /// refuses any other, spiffe-csi 0.2.6 `NodePublishVolume`), and every config that dials the
    /// Workload API names the agent's socket file inside that mount.
    #[test]
    fn the_workload_api_socket_is_wired_from_agent_to_workloads() {
        let (_, _, objects) = rendered();
        let objects: Vec<Value> = objects
            .into_iter()
            .chain(scenario_objects().unwrap())
            .collect();
        let daemonset = |name: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no DaemonSet {name}"))
        };
        // The directory a container mounts at `path`, on the host.
        let host_dir = |o: &Value, container: &str, path: &str| -> String {
            let spec = pod_spec(o).unwrap();
            let c = spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == container)
                .unwrap();
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{container} mounts nothing at {path}"));
            let volume = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            volume["hostPath"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{container}'s {path} is not a hostPath"))
                .to_owned()
        };
        let arg_after = |o: &Value, container: &str, flag: &str| -> String {
            let c = pod_spec(o).unwrap()["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == container)
                .unwrap()
                .clone();
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|a| a.as_str())
                .collect();
            let at = args
                .iter()
                .position(|a| *a == flag)
                .unwrap_or_else(|| panic!("{container} has no {flag}"));
            args[at + 1].to_owned()
        };

        let agent_conf = config_map(&objects, "spire-agent").unwrap()["agent.conf"]
            .as_str()
            .unwrap()
            .to_owned();
        let socket_path = agent_conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("socket_path = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_owned();
        let (socket_dir, socket_file) = socket_path.rsplit_once('/').unwrap();
        let agent = daemonset("spire-agent");
        let on_host = host_dir(agent, "spire-agent", socket_dir);
        let csi = daemonset("spiffe-csi-driver");
        let served = arg_after(csi, "spiffe-csi-driver", "-workload-api-socket-dir");
        assert_eq!(
            host_dir(csi, "spiffe-csi-driver", &served),
            on_host,
            "the CSI driver serves another directory than the agent's socket directory"
        );
        let csi_socket = arg_after(csi, "spiffe-csi-driver", "-csi-socket-path");
        assert_eq!(
            arg_after(csi, "node-driver-registrar", "-csi-address"),
            csi_socket
        );
        let (csi_dir, csi_file) = csi_socket.rsplit_once('/').unwrap();
        let registered = arg_after(csi, "node-driver-registrar", "-kubelet-registration-path");
        assert_eq!(
            registered,
            format!("{}/{csi_file}", host_dir(csi, "spiffe-csi-driver", csi_dir)),
            "the kubelet is told another CSI socket than the driver's"
        );
        assert_eq!(
            host_dir(csi, "node-driver-registrar", "/registration"),
            "/var/lib/kubelet/plugins_registry"
        );

        let mut dialled = 0;
        for o in objects
            .iter()
            .filter(|o| o["metadata"]["namespace"] == "demo")
        {
            let Some(spec) = pod_spec(o) else { continue };
            for v in spec["volumes"].as_array().into_iter().flatten() {
                if v["csi"]["driver"] == "csi.spiffe.io" {
                    assert_eq!(
                        v["csi"]["readOnly"],
                        true,
                        "{}: the SPIFFE CSI driver refuses a volume that is not readOnly",
                        describe(o)
                    );
                }
            }
        }
        let configs: Vec<String> = [
            "frontend-envoy",
            "backend-envoy",
            "backend-helper",
            "postgres-helper",
        ]
        .iter()
        .flat_map(|m| {
            config_map(&objects, m)
                .unwrap()
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .chain([serde_json::to_string(&scenario_objects().unwrap()).unwrap()])
        .collect();
        for text in &configs {
            for (i, _) in text.match_indices("/spiffe-workload-api/") {
                let rest = &text[i + "/spiffe-workload-api/".len()..];
                let file: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                    .collect();
                assert_eq!(
                    file, socket_file,
                    "a config dials /spiffe-workload-api/{file}"
                );
                dialled += 1;
            }
        }
        assert!(dialled >= 5, "only {dialled} configs dial the Workload API");
    }

    /// The lab's invariants, on the rendered objects.
    #[test]
    fn manifests_keep_the_labs_invariants() {
        let (_, _, objects) = rendered();
        let pins = Pins::load(&crate::project_root()).unwrap();
        let in_demo = |o: &&Value| o["metadata"]["namespace"] == "demo";
        let id = contract::workload_id;

        // SPIFFE IDs agree across service accounts, registration, RBAC, Envoy, the backend and init.sql.
        let accounts: Vec<&str> = objects
            .iter()
            .filter(in_demo)
            .filter(|o| o["kind"] == "ServiceAccount")
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            accounts.len(),
            contract::Workload::ALL.len(),
            "{accounts:?}"
        );
        let registered: Vec<String> = crate::runtime::kind::plan::registrations()
            .iter()
            .map(|e| e.spiffe_id.clone())
            .collect();
        let mut workloads: Vec<&str> = contract::Workload::ALL
            .iter()
            .map(|w| w.service_account())
            .collect();
        workloads.sort();
        let mut sorted = accounts.clone();
        sorted.sort();
        assert_eq!(sorted, workloads, "the demo's service accounts");
        for sa in &accounts {
            assert!(
                registered.contains(&id(sa)),
                "no registration for the {sa} service account"
            );
        }
        let rbac = config_map(&objects, "backend-rbac").unwrap()["rbac.yaml"]
            .as_str()
            .unwrap();
        let principals: Vec<&str> = rbac
            .lines()
            .filter_map(|l| l.split("exact: \"").nth(1))
            .map(|r| r.trim_end_matches(['"', ' ', '}']))
            .collect();
        assert_eq!(
            principals,
            [id("frontend")],
            "the RBAC policy must allow exactly the frontend"
        );
        let deny = std::fs::read_to_string(
            crate::project_root().join("manifests/backend/config/rbac-deny.yaml"),
        )
        .unwrap();
        assert!(
            !deny.contains(&id("frontend")),
            "the deny policy still names the frontend"
        );
        let fe = config_map(&objects, "frontend-envoy").unwrap()["envoy.yaml"]
            .as_str()
            .unwrap();
        assert!(
            fe.contains(&format!("- name: {}", id("frontend"))),
            "the frontend Envoy asks SDS for another SVID"
        );
        assert!(
            fe.contains(&format!("matcher: {{ exact: \"{}\" }}", id("backend"))),
            "the frontend Envoy does not require the backend's ID"
        );
        let be = config_map(&objects, "backend-envoy").unwrap()["envoy.yaml"]
            .as_str()
            .unwrap();
        assert!(
            be.contains(&format!("- name: {}", id("backend"))),
            "the backend Envoy asks SDS for another SVID"
        );
        let init = config_map(&objects, "postgres-init").unwrap()["init.sql"]
            .as_str()
            .unwrap();
        assert!(init.contains(&format!("require_client_spiffe_id('{}')", id("backend"))));
        let backend = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "backend")
            .unwrap();
        let env = backend["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let db_id = env
            .iter()
            .find(|e| e["name"] == "BACKEND_DB_SPIFFE_ID")
            .map(|e| e["value"].clone());
        assert_eq!(
            db_id,
            Some(json!(id("postgres"))),
            "the backend must check PostgreSQL for its ID"
        );

        // The scenarios' own objects (the rogue) keep the same invariants, and no entry names
        // the rogue until its scenario makes one.
        let scenario = scenario_objects().unwrap();
        assert!(
            scenario
                .iter()
                .any(|o| o["kind"] == "Pod" && o["metadata"]["name"] == "rogue"),
            "no rogue pod in manifests/scenarios"
        );
        assert!(!registered.contains(&id("rogue")), "up registers the rogue");
        let objects: Vec<Value> = objects.into_iter().chain(scenario).collect();

        // The security scenario's insider is a pod of no workload: no Workload API at all, and
        // the only pod in demo without it.
        let insider = |o: &Value| o["kind"] == "Pod" && o["metadata"]["name"] == "insider";
        let spec = objects
            .iter()
            .find(|o| insider(o))
            .and_then(pod_spec)
            .expect("no insider pod in manifests/scenarios");
        assert!(
            !spec.to_string().contains("csi.spiffe.io")
                && spec["automountServiceAccountToken"] == false,
            "the insider pod must hold no identity: {spec}"
        );

        // Every other pod whose containers use the Workload API mounts it through the CSI driver.
        for o in objects.iter().filter(in_demo).filter(|o| !insider(o)) {
            let Some(spec) = pod_spec(o) else { continue };
            let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
            let csi = volumes.iter().find(|v| v["name"] == "spiffe-workload-api");
            assert!(
                csi.is_some_and(|v| v["csi"]["driver"] == "csi.spiffe.io"),
                "{} has no Workload API volume",
                describe(o)
            );
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array().into_iter().flatten() {
                    let name = c["name"].as_str().unwrap_or_default();
                    let mounts: Vec<&str> = c["volumeMounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m["mountPath"].as_str())
                        .collect();
                    if ["envoy", "spiffe-helper", "fetch"].contains(&name) {
                        assert!(
                            mounts.contains(&"/spiffe-workload-api"),
                            "{} {name} cannot reach the Workload API",
                            describe(o)
                        );
                    }
                }
            }
        }

        // Images: a fixed tag, never latest, and every one in nix/pins.json.
        let mut pinned: Vec<String> = pins
            .images()
            .iter()
            .map(|i| i.reference.to_owned())
            .collect();
        pinned.extend(pins.services.all().map(|(_, image)| image.to_owned()));
        for (image, place) in images(&objects) {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                "{place}: {image} has no fixed tag"
            );
            assert!(
                pinned.contains(&image),
                "{place}: {image} is not in nix/pins.json"
            );
        }

        // Security contexts: non-root, seccomp, no privilege escalation, no capabilities in demo.
        for o in objects.iter().filter(in_demo) {
            let Some(spec) = pod_spec(o) else { continue };
            assert_eq!(
                spec["securityContext"]["runAsNonRoot"],
                true,
                "{}",
                describe(o)
            );
            assert_eq!(
                spec["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault",
                "{}",
                describe(o)
            );
            assert_eq!(
                spec["automountServiceAccountToken"],
                false,
                "{} mounts an API token it does not need",
                describe(o)
            );
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array().into_iter().flatten() {
                    let sc = &c["securityContext"];
                    assert_eq!(
                        sc["allowPrivilegeEscalation"],
                        false,
                        "{} {}",
                        describe(o),
                        c["name"]
                    );
                    assert_eq!(
                        sc["capabilities"]["drop"],
                        json!(["ALL"]),
                        "{} {}",
                        describe(o),
                        c["name"]
                    );
                }
            }
        }
    }
}
