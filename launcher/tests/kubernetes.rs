//! The Kubernetes manifests (`deploy/kubernetes`) for real, with podman.
//!
//! `kubectl kustomize` renders the base and the restore Job. No cluster runs
//! here, and podman 4.3 plays neither a StatefulSet nor a Job, so each pod
//! template is played as what a cluster would make of it: the StatefulSet's
//! as the Pod `waiaas-N` with its PersistentVolumeClaim (a podman volume of
//! the claim's name, created once and kept, as `volumeClaimTemplates` does),
//! the Job's as its Pod on that claim. Both run their real init container,
//! security context and commands, on real images of two releases: A built
//! the documented default way (`podman build .`, compiled from source in the
//! Dockerfile's Rust stage) and B built `--target prebuilt` from build B's
//! binaries (`testkit/src/builds.rs`, `testkit/src/images.rs`).
//!
//! In a cluster's place the test does two things: the readiness probe (it
//! polls `/health` on the published port), and the restart policy: the Pods
//! are played with `restartPolicy: Never`, since podman 4.3 applies a pod's
//! `Always` to its completed init containers and reruns them (Kubernetes
//! never restarts a completed init container). Skipped, saying why, without
//! the container tier's prerequisites or kubectl — never in CI
//! (`testkit/src/podman.rs`).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml_ng::Value;
use waiaas_shared::backup::{Kind, MANIFEST as BACKUP_MANIFEST, Manifest};
use waiaas_shared::config::Config;

use testkit::builds::{A_SCHEMA, B_SCHEMA, B_VERSION};
use testkit::images::Binaries;
use testkit::podman::{Api, Cleanup, Podman, podman, skip};
use testkit::{Outcome, free_port};

/// How long a pod may take from `kube play` to answering `/health`.
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long the restore Job's pod may take to finish.
const JOB_WITHIN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Manifests

/// The objects `kubectl kustomize deploy/kubernetes/<dir>` renders, or `None`
/// (the test is skipped, saying so) without kubectl.
fn kustomize(dir: &str) -> Option<Vec<Value>> {
    let path = testkit::builds::repo_root()
        .join("deploy/kubernetes")
        .join(dir);
    let output = match Command::new("kubectl").arg("kustomize").arg(&path).output() {
        Ok(output) => output,
        Err(e) => {
            skip(&format!(
                "the Kubernetes tests need kubectl (`kubectl kustomize` renders deploy/kubernetes): {e}"
            ));
            return None;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        serde_yaml_ng::Deserializer::from_slice(&output.stdout)
            .map(|document| Value::deserialize(document).expect("a rendered object"))
            .collect(),
    )
}

/// The rendered object of `kind` named `name`.
fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered objects"))
}

/// A pod template's containers, init containers first.
fn containers(spec: &mut Value) -> impl Iterator<Item = &mut Value> {
    let spec = spec.as_mapping_mut().expect("a pod spec");
    let (mut init, mut main) = (None, None);
    for (key, value) in spec.iter_mut() {
        match key.as_str() {
            Some("initContainers") => init = value.as_sequence_mut(),
            Some("containers") => main = value.as_sequence_mut(),
            _ => {}
        }
    }
    init.into_iter().chain(main).flatten()
}

/// The Pod a controller makes of `template`, for `podman kube play`: every
/// container on `image` with no version check (no registry in a test), the
/// volume `data` on `claim`, and `restartPolicy: Never` (see the top).
fn pod(name: &str, template: &Value, image: &str, claim: &str) -> Value {
    let mut spec = template["spec"].clone();
    for container in containers(&mut spec) {
        container["image"] = image.into();
        let env: Value =
            serde_yaml_ng::from_str("[{name: WAIAAS_DAEMON_UPDATE_CHECK, value: 'false'}]")
                .unwrap();
        match container.get_mut("env").and_then(Value::as_sequence_mut) {
            Some(list) => list.extend(env.as_sequence().unwrap().iter().cloned()),
            None => container["env"] = env,
        }
    }
    let volumes = spec["volumes"].as_sequence_mut().expect("volumes");
    volumes.retain(|v| v["name"].as_str() != Some("data"));
    volumes.push(
        serde_yaml_ng::from_str(&format!(
            "{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}"
        ))
        .unwrap(),
    );
    spec["restartPolicy"] = "Never".into();
    let mut pod: Value = serde_yaml_ng::from_str("{apiVersion: v1, kind: Pod}").unwrap();
    pod["metadata"]["name"] = name.into();
    pod["metadata"]["labels"] = template["metadata"]["labels"].clone();
    pod["spec"] = spec;
    pod
}

// ---------------------------------------------------------------------------
// A node

/// One StatefulSet replica's claim on this machine's podman, its API
/// published on the host's loopback, and the pods played on it.
struct Node {
    podman: Podman,
    cleanup: Cleanup,
    statefulset: Value,
    /// The claim `data-waiaas-0` of a cluster, named for this test.
    claim: String,
    api: Api,
    files: tempfile::TempDir,
}

impl Node {
    fn new(podman: Podman, statefulset: &Value) -> Self {
        let claim = format!("data-waiaas-test-k8s-{}", std::process::id());
        let _ = podman.run(&["volume", "rm", "--force", &claim]);
        let mut cleanup = podman.cleanup();
        cleanup.volumes.push(claim.clone());
        Self {
            podman,
            cleanup,
            statefulset: statefulset.clone(),
            claim,
            api: Api {
                port: free_port(),
                volume: PathBuf::new(),
            },
            files: tempfile::tempdir().unwrap(),
        }
    }

    /// `podman kube play` of `objects`, the pod `name` among them.
    fn play(&mut self, name: &str, objects: &[Value]) -> Outcome {
        let _ = self
            .podman
            .run(&["pod", "rm", "--force", "--time", "0", name]);
        self.cleanup.pods.push(name.to_string());
        let file = self.files.path().join(format!("{name}.yaml"));
        let yaml: Vec<String> = objects
            .iter()
            .map(|o| serde_yaml_ng::to_string(o).unwrap())
            .collect();
        fs::write(&file, yaml.join("---\n")).unwrap();
        self.podman.run(&["kube", "play", file.to_str().unwrap()])
    }

    /// The StatefulSet's pod on `image`, its API published; with the claim
    /// the first time (`volumeClaimTemplates` makes it once, then keeps it).
    fn play_replica(&mut self, name: &str, image: &str) -> Outcome {
        let template = &self.statefulset["spec"]["template"];
        let mut replica = pod(name, template, image, &self.claim);
        let port = &mut replica["spec"]["containers"][0]["ports"][0];
        port["hostPort"] = self.api.port.into();
        port["hostIP"] = "127.0.0.1".into();
        let mut objects = vec![replica];
        let first = self.api.volume.as_os_str().is_empty();
        if first {
            let mut claim = self.statefulset["spec"]["volumeClaimTemplates"][0].clone();
            claim["apiVersion"] = "v1".into();
            claim["kind"] = "PersistentVolumeClaim".into();
            claim["metadata"]["name"] = self.claim.clone().into();
            objects.insert(0, claim);
        }
        let outcome = self.play(name, &objects);
        if first {
            self.api.volume = PathBuf::from(self.podman.ok(&[
                "volume",
                "inspect",
                "--format",
                "{{.Mountpoint}}",
                &self.claim,
            ]));
        }
        outcome
    }

    /// `podman inspect`'s `{{.State.Status}}` and exit code of a pod's container.
    fn state(&self, pod: &str, container: &str) -> (String, i32) {
        let state = self.podman.ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &format!("{pod}-{container}"),
        ]);
        let (status, code) = state.split_once(' ').unwrap();
        (status.to_string(), code.parse().unwrap())
    }

    fn logs(&self, pod: &str, container: &str) -> String {
        self.podman.logs(&format!("{pod}-{container}"))
    }

    /// Waits, as the readiness probe does, until `/health` answers 200; how
    /// long that took. The container's death ends the wait.
    fn wait_ready(&self, pod: &str) -> Duration {
        let started = Instant::now();
        while self.api.ready().is_none() {
            let (status, code) = self.state(pod, "waiaas");
            assert!(
                status == "running" && started.elapsed() < READY_WITHIN,
                "{pod} not ready within {READY_WITHIN:?} ({status}, exit {code}):\n{}",
                self.logs(pod, "waiaas")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    }

    /// A node drain's stop of the pod (SIGTERM, SIGKILL after the pod's
    /// `terminationGracePeriodSeconds`), then its removal: the launcher must
    /// have drained and exited 0 in time.
    fn stop(&self, pod: &str) -> Duration {
        let grace = self.statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        let started = Instant::now();
        self.podman
            .ok(&["pod", "stop", "--time", &grace.to_string(), pod]);
        let took = started.elapsed();
        let (_, code) = self.state(pod, "waiaas");
        assert!(
            code == 0 && took < Duration::from_secs(grace),
            "{pod} stopped with {code} after {took:?}:\n{}",
            self.logs(pod, "waiaas")
        );
        self.podman.ok(&["pod", "rm", pod]);
        took
    }

    /// The backups of kind `pre-migrate` on the claim.
    fn pre_migrate_backups(&self) -> Vec<(String, Manifest)> {
        fs::read_dir(self.api.volume.join("backups"))
            .expect("backups/ on the claim")
            .flatten()
            .filter_map(|e| {
                let manifest = fs::read(e.path().join(BACKUP_MANIFEST)).ok()?;
                let manifest: Manifest = serde_json::from_slice(&manifest).unwrap();
                (manifest.kind == Kind::PreMigrate)
                    .then(|| (e.file_name().to_string_lossy().into_owned(), manifest))
            })
            .collect()
    }

    fn wallet_names(&self) -> BTreeSet<String> {
        self.api.wallets().into_values().collect()
    }
}

// ---------------------------------------------------------------------------

/// What the manifests promise before anything runs: one writer per volume,
/// a drain that outlasts the daemon's, probes that spare a starting pod, and
/// the restricted security context on every container. (Needs kubectl only.)
#[test]
fn the_statefulset_keeps_one_writer_per_volume_and_drains_gracefully() {
    let Some(base) = kustomize("base") else {
        return;
    };
    let statefulset = object(&base, "StatefulSet", "waiaas");
    let spec = &statefulset["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(1), "one instance");
    assert_eq!(
        spec["updateStrategy"]["type"].as_str(),
        Some("RollingUpdate"),
        "a StatefulSet's rolling update replaces a pod only once it is gone"
    );
    assert_eq!(
        spec["updateStrategy"]["rollingUpdate"]["partition"].as_u64(),
        Some(0),
        "the canary knob, off in the base"
    );
    assert_ne!(
        spec["podManagementPolicy"].as_str(),
        Some("Parallel"),
        "ordered"
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["metadata"]["name"].as_str(),
        Some("data")
    );
    let pod = &spec["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain = Config::default().daemon.shutdown_timeout;
    assert!(
        grace >= drain + 10,
        "terminationGracePeriodSeconds {grace} must cover [daemon] shutdown_timeout ({drain} s) and the launcher's exit"
    );
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(10001));
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(10001));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let mut pod = pod.clone();
    let mut names = Vec::new();
    for container in containers(&mut pod) {
        let name = container["name"].as_str().unwrap().to_string();
        let security = &container["securityContext"];
        assert_eq!(
            (
                security["allowPrivilegeEscalation"].as_bool(),
                security["readOnlyRootFilesystem"].as_bool(),
                security["capabilities"]["drop"][0].as_str(),
            ),
            (Some(false), Some(true), Some("ALL")),
            "{name}'s security context"
        );
        assert_eq!(
            container["terminationMessagePolicy"].as_str(),
            Some("FallbackToLogsOnError"),
            "{name}: a refusal's reason shows in the pod's status"
        );
        names.push(name);
    }
    assert_eq!(
        names,
        ["migrate", "waiaas"],
        "the init container, then the launcher"
    );
    let main = &pod["containers"][0];
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            main[probe]["httpGet"]["path"].as_str(),
            Some("/health"),
            "{probe}"
        );
    }
    let patience = |probe: &str| {
        main[probe]["periodSeconds"].as_u64().unwrap()
            * main[probe]["failureThreshold"].as_u64().unwrap()
    };
    assert!(
        patience("startupProbe") >= 120 && patience("livenessProbe") >= 60,
        "a slow start is not killed: startup {} s, liveness {} s",
        patience("startupProbe"),
        patience("livenessProbe")
    );
    // The Service and the PodDisruptionBudget select the StatefulSet's pods.
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    assert_eq!(
        &object(&base, "Service", "waiaas")["spec"]["selector"],
        labels
    );
    let budget = &object(&base, "PodDisruptionBudget", "waiaas")["spec"];
    assert_eq!(&budget["selector"]["matchLabels"], labels);
    assert_eq!(
        budget["maxUnavailable"].as_u64(),
        Some(0),
        "no voluntary eviction"
    );
}

/// The four steps on one claim: A serves; B's init container backs up
/// and migrates, B serves every acknowledged write; A's init container
/// refuses B's schema (exit 20) and the pod never serves, its logs saying
/// what to do; the restore Job from the pre-migrate backup, then A's image,
/// brings A back with every write acknowledged before the upgrade.
#[test]
fn the_pod_upgrades_refuses_a_downgrade_and_the_restore_job_brings_a_back() {
    let Some(podman) = podman() else {
        return;
    };
    let (Some(base), Some(restore)) = (kustomize("base"), kustomize("restore")) else {
        return;
    };
    let image_a = testkit::images::build(
        &podman,
        "localhost/waiaas-test-k8s:a",
        Binaries::Source,
        testkit::builds::a_version(),
    );
    let image_b = testkit::images::build(
        &podman,
        "localhost/waiaas-test-k8s:b",
        Binaries::Prebuilt(testkit::builds::b_bin_dir()),
        B_VERSION,
    );
    let mut node = Node::new(podman, object(&base, "StatefulSet", "waiaas"));
    let name = |step: &str| format!("waiaas-test-k8s-{}-{step}", std::process::id());

    // 1. Release A on a new claim; every write the API acknowledges, kept.
    let a = name("a");
    let started = Instant::now();
    let played = node.play_replica(&a, &image_a);
    assert!(played.status.success(), "kube play {a}: {played:?}");
    node.wait_ready(&a);
    eprintln!("A: kube play to ready in {:?}", started.elapsed());
    let health = node.api.health();
    assert_eq!(
        (health.version.as_str(), health.schema_version),
        (testkit::builds::a_version(), A_SCHEMA)
    );
    let mut acknowledged = BTreeSet::new();
    for wallet in ["treasury", "payroll", "cold-storage"] {
        node.api.create_wallet(wallet);
        acknowledged.insert(wallet.to_string());
    }
    let took = node.stop(&a);
    eprintln!("A: graceful stop in {took:?}");

    // 2. B's image on the same claim: its init container backs up, migrates.
    let b = name("b");
    let started = Instant::now();
    let played = node.play_replica(&b, &image_b);
    assert!(played.status.success(), "kube play {b}: {played:?}");
    node.wait_ready(&b);
    eprintln!(
        "B: kube play to ready (migration included) in {:?}",
        started.elapsed()
    );
    let health = node.api.health();
    assert_eq!(
        (health.version.as_str(), health.schema_version),
        (B_VERSION, B_SCHEMA),
        "B's init container migrated the claim"
    );
    let backups = node.pre_migrate_backups();
    assert_eq!(backups.len(), 1, "one pre-migrate backup: {backups:?}");
    let (backup, manifest) = &backups[0];
    assert_eq!(
        (manifest.schema_version, manifest.to_version.as_str()),
        (A_SCHEMA, B_VERSION)
    );
    assert_eq!(
        node.wallet_names(),
        acknowledged,
        "every write A acknowledged, served by B"
    );
    // Acknowledged after the backup: a restore of it does not keep this one.
    node.api.create_wallet("after-upgrade");
    node.stop(&b);

    // 3. A's image again: its init container refuses, the pod never serves.
    let back = name("back");
    let played = node.play_replica(&back, &image_a);
    assert!(
        !played.status.success() && played.stderr.contains("exited with code 20"),
        "kube play reports the init container's refusal: {played:?}"
    );
    assert_eq!(node.state(&back, "migrate"), ("exited".to_string(), 20));
    let logs = node.logs(&back, "migrate");
    assert!(
        logs.contains("newer than this daemon")
            && logs.contains("restore")
            && logs.contains("deploy/kubernetes/README.md"),
        "the init container says why and what to do:\n{logs}"
    );
    assert_eq!(
        node.state(&back, "waiaas").0,
        "created",
        "the launcher never started"
    );
    assert!(node.api.ready().is_none(), "nothing serves");
    node.podman
        .ok(&["pod", "rm", "--force", "--time", "0", &back]);

    // 4. The README's rollback: the restore Job from the named backup with A's
    // image (the knobs its kustomization sets), then A's image.
    let mut job = object(&restore, "Job", "waiaas-restore").clone();
    let template = &mut job["spec"]["template"];
    let env = &mut template["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"].as_str(), Some("BACKUP"));
    env["value"] = backup.as_str().into();
    let restore_pod = name("restore");
    let played = node.play(
        &restore_pod,
        &[pod(&restore_pod, template, &image_a, &node.claim)],
    );
    assert!(
        played.status.success(),
        "kube play {restore_pod}: {played:?}"
    );
    let started = Instant::now();
    node.podman
        .wait("the restore Job's pod to finish", JOB_WITHIN, || {
            node.state(&restore_pod, "restore").0 == "exited"
        });
    let logs = node.logs(&restore_pod, "restore");
    assert_eq!(
        node.state(&restore_pod, "restore").1,
        0,
        "the restore Job:\n{logs}"
    );
    assert!(
        logs.contains(&format!("restored /data/backups/{backup}")),
        "{logs}"
    );
    eprintln!("restore Job in {:?}", started.elapsed());
    node.podman.ok(&["pod", "rm", &restore_pod]);

    let restored = name("restored");
    let played = node.play_replica(&restored, &image_a);
    assert!(played.status.success(), "kube play {restored}: {played:?}");
    node.wait_ready(&restored);
    assert_eq!(
        node.api.health().schema_version,
        A_SCHEMA,
        "A serves the restored database"
    );
    assert_eq!(
        node.wallet_names(),
        acknowledged,
        "every write acknowledged before the upgrade, and none after its backup"
    );
    node.stop(&restored);
}
