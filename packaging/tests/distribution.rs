//! Static checks of the distribution files (SPEC §9; §10 rows 18–24): the
//! Dockerfile and compose file, the systemd units, the release workflows and
//! release-please's configuration.
//!
//! Where a workflow decides something with a shell script (the release's
//! version → npm dist-tag / image tags / dry-run computation, the deploy
//! job's publish and push steps), the test runs that script, exactly as the
//! workflow holds it, with bash — and stand-in `npm` and `docker` programs
//! that record what they were asked to do — instead of matching its text.
//!
//! `.ci/static-checks` complements these: actionlint, hadolint, shellcheck,
//! `systemd-analyze verify`, commitlint on sample titles, and release-please's
//! own code run offline on the config (Release PR versions for fix / feat /
//! BREAKING CHANGE commits).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml_ng::Value;
use waiaas_packaging::{Entry, npm_tarball_name, write_package_tarball};
use waiaas_shared::config::Config;
use waiaas_shared::exit::daemon::PERMANENT;
use waiaas_shared::release::{CLI_PACKAGE, platform_package};

// ---------------------------------------------------------------------------
// Files

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("packaging/ sits in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

fn workspace_manifest() -> toml::Table {
    read("Cargo.toml").parse().expect("Cargo.toml parses")
}

fn workspace_version() -> String {
    workspace_manifest()["workspace"]["package"]["version"]
        .as_str()
        .expect("[workspace.package] version")
        .to_string()
}

/// The workspace's member folders.
fn members() -> Vec<String> {
    workspace_manifest()["workspace"]["members"]
        .as_array()
        .expect("[workspace] members")
        .iter()
        .map(|m| m.as_str().expect("a member is a path").to_string())
        .collect()
}

/// Every file under the repository, build output and VCS data left out.
fn repo_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if matches!(name.to_str(), Some("target" | "node_modules" | ".git")) {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(&entry.path(), out),
                Ok(_) => out.push(entry.path()),
                Err(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out
}

// ---------------------------------------------------------------------------
// Workflows

struct Workflow {
    file: String,
    doc: Value,
}

fn workflow(name: &str) -> Workflow {
    let file = format!(".github/workflows/{name}");
    let doc = serde_yaml_ng::from_str(&read(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    Workflow { file, doc }
}

fn all_workflows() -> Vec<Workflow> {
    let dir = repo().join(".github/workflows");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no workflows in {}", dir.display());
    names.iter().map(|n| workflow(n)).collect()
}

impl Workflow {
    fn jobs(&self) -> Vec<(String, &Value)> {
        self.doc["jobs"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{} has no jobs", self.file))
            .iter()
            .map(|(id, job)| (id.as_str().expect("a job id").to_string(), job))
            .collect()
    }

    fn job(&self, id: &str) -> &Value {
        self.doc["jobs"]
            .get(id)
            .unwrap_or_else(|| panic!("{} has no job `{id}`", self.file))
    }

    /// The `on:` triggers (a YAML 1.2 parser keeps `on` a string key).
    fn on(&self) -> &Value {
        self.doc
            .get("on")
            .unwrap_or_else(|| panic!("{} has no `on:`", self.file))
    }
}

fn steps(job: &Value) -> Vec<&Value> {
    job["steps"]
        .as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// The step with this `name` or `id`.
fn step<'a>(job: &'a Value, wanted: &str) -> &'a Value {
    steps(job)
        .into_iter()
        .find(|s| s["name"].as_str() == Some(wanted) || s["id"].as_str() == Some(wanted))
        .unwrap_or_else(|| panic!("no step named `{wanted}`"))
}

/// A step's `run:` script, checked to contain no `${{ }}` expression, so that
/// what a test runs is exactly what the runner runs.
fn script(step: &Value) -> String {
    let script = step["run"]
        .as_str()
        .expect("a step with a run: script")
        .to_string();
    assert!(
        !script.contains("${{"),
        "a tested script must take its inputs from env:, not from ${{{{ }}}} expressions:\n{script}"
    );
    script
}

fn step_env(step: &Value) -> BTreeMap<String, String> {
    step["env"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        other => panic!("unexpected env value {other:?}"),
                    };
                    (k.as_str().unwrap().to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_env(step: &Value, name: &str, expression: &str) {
    let env = step_env(step);
    assert_eq!(
        env.get(name).map(|v| squash(v)),
        Some(squash(expression)),
        "step `{}`: env {name} must be {expression}",
        step["name"].as_str().unwrap_or("?")
    );
}

/// `${{ a }}` and `${{a}}` compare equal.
fn squash(text: &str) -> String {
    text.split_whitespace().collect()
}

fn needs(job: &Value) -> BTreeSet<String> {
    match &job["needs"] {
        Value::String(s) => BTreeSet::from([s.clone()]),
        Value::Sequence(list) => list
            .iter()
            .map(|v| v.as_str().expect("needs: job ids").to_string())
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn environment(job: &Value) -> Option<String> {
    match &job["environment"] {
        Value::String(s) => Some(s.clone()),
        Value::Mapping(m) => m.get("name").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A job's whole text (steps, env, `with:`), for "does it use X" questions.
fn text_of(value: &Value) -> String {
    serde_yaml_ng::to_string(value).unwrap()
}

/// The shell commands of a script: continuation lines joined, comments
/// dropped, split at `;`, `&&`, `||`, `|` and line ends.
fn commands(script: &str) -> Vec<String> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line.to_string();
        for sep in ["&&", "||", ";", "|"] {
            rest = rest.replace(sep, "\n");
        }
        out.extend(
            rest.lines()
                .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|c| !c.is_empty()),
        );
    }
    out
}

/// What a step publishes or pushes, if anything: every way our workflows
/// could put a package on a registry or a tag on an image.
fn publications_of(step: &Value) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(uses) = step["uses"].as_str() {
        let with = &step["with"];
        let push = &with["push"];
        let pushes = !matches!(push, Value::Null | Value::Bool(false))
            && push.as_str().is_none_or(|s| s.trim() != "false");
        if pushes {
            found.push(format!("{uses} with push: {push:?}"));
        }
        let outputs = with["outputs"].as_str().unwrap_or_default();
        if outputs.contains("push=true") || outputs.contains("type=registry") {
            found.push(format!("{uses} with outputs: {outputs}"));
        }
        if uses.contains("npm-publish") || uses.contains("publish-action") {
            found.push(uses.to_string());
        }
    }
    if let Some(run) = step["run"].as_str() {
        for command in commands(run) {
            let padded = format!(" {command} ");
            let publishes = [
                "npm publish",
                "yarn publish",
                "pnpm publish",
                "cargo publish",
            ]
            .iter()
            .any(|p| padded.contains(&format!(" {p} ")) || padded.contains(&format!(" {p}\"")));
            if publishes && !padded.contains(" --dry-run") {
                found.push(command.clone());
            }
            let pushes = [
                "docker push",
                "docker image push",
                "docker manifest push",
                "docker buildx imagetools create",
                "podman push",
                "skopeo copy",
                "crane push",
                "crane copy",
                "oras push",
            ]
            .iter()
            .any(|p| padded.contains(&format!(" {p} ")));
            let builds_and_pushes = (padded.contains(" docker build")
                || padded.contains(" buildx build"))
                && (padded.contains(" --push") || padded.contains("type=registry"));
            if pushes || builds_and_pushes {
                found.push(command.clone());
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Running workflow scripts

/// What a script run left: exit code, output, `$GITHUB_OUTPUT`, and the calls
/// the stand-in programs recorded (program name, then each argument).
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
    outputs: BTreeMap<String, String>,
    calls: Vec<Vec<String>>,
}

/// Runs `script` as a GitHub Actions `run:` step on Linux runs it
/// (`bash --noprofile --norc -eo pipefail`), in a clean environment holding
/// `env`, with stand-ins for `stubs` first on the PATH. A stand-in records its
/// arguments and succeeds — except `npm view`, which answers "not published".
fn run_script(script: &str, env: &[(&str, String)], stubs: &[&str]) -> Ran {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("stub-bin");
    fs::create_dir(&bin).unwrap();
    let log = tmp.path().join("calls.log");
    for name in stubs {
        let path = bin.join(name);
        fs::write(
            &path,
            "#!/bin/sh\n\
             # Stand-in: records the call, one argument per field.\n\
             { printf '%s' \"$(basename \"$0\")\"; for a in \"$@\"; do printf '\\037%s' \"$a\"; done; printf '\\n'; } >> \"$STUB_LOG\"\n\
             if [ \"$(basename \"$0\")\" = npm ] && [ \"$1\" = view ]; then echo 'npm error code E404' >&2; exit 1; fi\n\
             exit 0\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script_path = tmp.path().join("step.sh");
    fs::write(&script_path, script).unwrap();
    let output_file = tmp.path().join("github-output");
    fs::write(&output_file, "").unwrap();
    let mut command = Command::new("/bin/bash");
    command
        .args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&script_path)
        .current_dir(tmp.path())
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
        )
        .env("HOME", tmp.path())
        .env("RUNNER_TEMP", tmp.path())
        .env("GITHUB_OUTPUT", &output_file)
        .env("STUB_LOG", &log)
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("run bash");
    let outputs = fs::read_to_string(&output_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let calls = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('\u{1f}').map(str::to_string).collect())
        .collect();
    Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        outputs,
        calls,
    }
}

/// What release.yml's meta job decides for a release.
#[derive(Debug)]
struct ReleaseTags {
    version: String,
    prerelease: bool,
    npm_dist_tag: String,
    docker_tags: Vec<String>,
    dry_run: bool,
}

/// Runs the meta job's tag-computing step for a GitHub Release of `tag`
/// (`marked_prerelease`: the Release's own prerelease flag).
fn release_tags(tag: &str, marked_prerelease: bool) -> Result<ReleaseTags, String> {
    let release = workflow("release.yml");
    let meta = release.job("meta");
    let step = step(meta, "tags");
    assert_env(step, "TAG", "${{ github.event.release.tag_name }}");
    assert_env(
        step,
        "RELEASE_PRERELEASE",
        "${{ github.event.release.prerelease }}",
    );
    for output in [
        "version",
        "prerelease",
        "npm_dist_tag",
        "docker_tags",
        "dry_run",
    ] {
        assert_eq!(
            meta["outputs"][output].as_str().map(squash),
            Some(squash(&format!("${{{{ steps.tags.outputs.{output} }}}}"))),
            "meta's output {output} must come from the tags step"
        );
    }
    let ran = run_script(
        &script(step),
        &[
            ("TAG", tag.to_string()),
            ("RELEASE_PRERELEASE", marked_prerelease.to_string()),
        ],
        &[],
    );
    if !ran.success {
        return Err(format!("{}{}", ran.stdout, ran.stderr));
    }
    let get = |k: &str| {
        ran.outputs
            .get(k)
            .unwrap_or_else(|| panic!("the tags step wrote no {k}: {:?}", ran.outputs))
            .clone()
    };
    let flag = |k: &str| match get(k).as_str() {
        "true" => true,
        "false" => false,
        other => panic!("{k}={other} is neither true nor false"),
    };
    Ok(ReleaseTags {
        version: get("version"),
        prerelease: flag("prerelease"),
        npm_dist_tag: get("npm_dist_tag"),
        docker_tags: get("docker_tags").split(',').map(str::to_string).collect(),
        dry_run: flag("dry_run"),
    })
}

/// The platform packages deploy publishes in the tests.
const TEST_TARGETS: [&str; 2] = ["linux-x64", "darwin-arm64"];

/// Runs deploy's npm step for a release as meta decided it, over real (tiny)
/// package tarballs; returns the `npm` calls.
fn deploy_npm(tags: &ReleaseTags) -> Vec<Vec<String>> {
    let release = workflow("release.yml");
    let step = step(release.job("deploy"), "Publish the npm packages");
    assert_env(step, "VERSION", "${{ needs.meta.outputs.version }}");
    assert_env(step, "DIST_TAG", "${{ needs.meta.outputs.npm_dist_tag }}");
    assert_env(step, "DRY_RUN", "${{ needs.meta.outputs.dry_run }}");
    assert_env(step, "NODE_AUTH_TOKEN", "${{ secrets.NPM_TOKEN }}");
    let dist = tempfile::tempdir().unwrap();
    let mut names = vec![CLI_PACKAGE.to_string()];
    names.extend(TEST_TARGETS.iter().map(|t| platform_package(t)));
    for name in &names {
        let package = serde_json::json!({"name": name, "version": tags.version});
        write_package_tarball(
            &dist.path().join(npm_tarball_name(name, &tags.version)),
            &[Entry::file(
                "package/package.json",
                package.to_string().into_bytes(),
                0o644,
            )],
        )
        .unwrap();
    }
    let ran = run_script(
        &script(step),
        &[
            ("VERSION", tags.version.clone()),
            ("DIST_TAG", tags.npm_dist_tag.clone()),
            ("DRY_RUN", tags.dry_run.to_string()),
            ("DIST_DIR", dist.path().display().to_string()),
            ("NODE_AUTH_TOKEN", "test-token".into()),
        ],
        &["npm"],
    );
    assert!(
        ran.success,
        "deploy's npm step failed:\n{}{}",
        ran.stdout, ran.stderr
    );
    ran.calls
}

/// Runs deploy's image step for a release as meta decided it; returns the
/// `docker` calls.
fn deploy_docker(tags: &ReleaseTags) -> Vec<Vec<String>> {
    let release = workflow("release.yml");
    let step = step(release.job("deploy"), "Push the image tags");
    assert_env(step, "VERSION", "${{ needs.meta.outputs.version }}");
    assert_env(step, "DOCKER_TAGS", "${{ needs.meta.outputs.docker_tags }}");
    assert_env(step, "DRY_RUN", "${{ needs.meta.outputs.dry_run }}");
    let ran = run_script(
        &script(step),
        &[
            ("IMAGE", "example/waiaas".into()),
            ("VERSION", tags.version.clone()),
            ("DOCKER_TAGS", tags.docker_tags.join(",")),
            ("DRY_RUN", tags.dry_run.to_string()),
            ("IMAGES_DIR", "images".into()),
        ],
        &["docker"],
    );
    assert!(
        ran.success,
        "deploy's image step failed:\n{}{}",
        ran.stdout, ran.stderr
    );
    ran.calls
}

fn publishes(calls: &[Vec<String>]) -> Vec<&Vec<String>> {
    calls
        .iter()
        .filter(|c| c.get(1).map(String::as_str) == Some("publish"))
        .collect()
}

/// `docker push` and `docker buildx imagetools create` calls.
fn pushes(calls: &[Vec<String>]) -> Vec<&Vec<String>> {
    calls
        .iter()
        .filter(|c| {
            c.get(1).map(String::as_str) == Some("push")
                || (c.get(1).map(String::as_str) == Some("buildx")
                    && c.get(2).map(String::as_str) == Some("imagetools"))
        })
        .collect()
}

/// The image tags (`IMAGE:<tag>`) a docker call names with `--tag`/`-t`.
fn tags_named(call: &[String]) -> BTreeSet<String> {
    call.windows(2)
        .filter(|w| w[0] == "--tag" || w[0] == "-t")
        .map(|w| {
            w[1].rsplit_once(':')
                .map(|(_, t)| t.to_string())
                .unwrap_or_default()
        })
        .collect()
}

fn arg_after<'a>(call: &'a [String], flag: &str) -> Option<&'a str> {
    call.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].as_str())
}

// ---------------------------------------------------------------------------
// Dockerfile

#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.is_empty() && current.is_empty() {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    logical
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (keyword, args) = l.trim().split_once(char::is_whitespace).unwrap_or((&l, ""));
            Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.split_whitespace().collect::<Vec<_>>().join(" "),
            }
        })
        .collect()
}

/// A stage's name (`FROM image AS name`).
fn stage_name(from: &Instruction) -> Option<&str> {
    let words: Vec<&str> = from.args.split_whitespace().collect();
    match words.as_slice() {
        [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => Some(name),
        _ => None,
    }
}

/// The instructions of the image a build of `target` makes (`None`: the last
/// stage, what `docker build .` ships): the target stage's and, through
/// `FROM <stage>`, those of the stages it starts from, base first.
fn image_of<'a>(all: &'a [Instruction], target: Option<&str>) -> Vec<&'a Instruction> {
    let froms: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].keyword == "FROM")
        .collect();
    let mut start = match target {
        None => *froms.last().expect("a FROM"),
        Some(name) => *froms
            .iter()
            .find(|&&i| stage_name(&all[i]) == Some(name))
            .unwrap_or_else(|| panic!("no stage {name}")),
    };
    let mut chain = Vec::new();
    loop {
        let end = froms
            .iter()
            .copied()
            .find(|&i| i > start)
            .unwrap_or(all.len());
        chain.splice(0..0, all[start..end].iter());
        let base = all[start]
            .args
            .split_whitespace()
            .next()
            .unwrap_or_default();
        match froms.iter().find(|&&i| stage_name(&all[i]) == Some(base)) {
            Some(&parent) => start = parent,
            None => return chain,
        }
    }
}

/// `key=value key2="value two"` pairs (LABEL, ENV).
fn key_values(args: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value));
    }
}

fn stage_pairs(stage: &[&Instruction], keyword: &str) -> BTreeMap<String, String> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .flat_map(|i| key_values(&i.args))
        .collect()
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("`{args}` is not the exec (JSON) form: {e}"))
}

/// The HEALTHCHECK's command, in exec form.
fn healthcheck(stage: &[&Instruction]) -> Vec<String> {
    let check = stage
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    let (_, cmd) = check
        .args
        .split_once("CMD ")
        .expect("HEALTHCHECK … CMD [...]");
    exec_form(cmd.trim())
}

// ---------------------------------------------------------------------------
// systemd units

/// `Section.Key` → every value assigned, in order.
fn unit(rel: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: not key=value: {line}"));
        out.entry(format!("{section}.{}", key.trim()))
            .or_default()
            .push(value.trim().to_string());
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("expected exactly one {key}=, found {other:?}"),
    }
}

/// systemd's time span (`330`, `30s`, `5min`, `1h`) in seconds.
fn seconds(span: &str) -> u64 {
    let digits: String = span.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("time span `{span}`"));
    match span[digits.len()..].trim() {
        "" | "s" | "sec" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        other => panic!("unit `{other}` of `{span}`"),
    }
}

/// `waiaas_shared::config` accepts `[daemon] shutdown_timeout = secs`.
fn accepts_shutdown_timeout(secs: u64) -> bool {
    Config::parse(
        Some(&format!("[daemon]\nshutdown_timeout = {secs}\n")),
        Path::new("config.toml"),
        Vec::new(),
    )
    .is_ok()
}

// ---------------------------------------------------------------------------
// Scenario 18 and the image

#[test]
fn scenario_18_watchtower_label_present() {
    let all = dockerfile();
    for target in [None, Some("prebuilt")] {
        let labels = stage_pairs(&image_of(&all, target), "LABEL");
        assert_eq!(
            labels
                .get("com.centurylinklabs.watchtower.enable")
                .map(String::as_str),
            Some("true"),
            "the shipped image ({target:?}) must carry \
             LABEL com.centurylinklabs.watchtower.enable=\"true\"; labels: {labels:?}"
        );
    }
}

#[test]
fn dockerfile_runs_as_non_root_with_volume_healthcheck_and_labels() {
    let all = dockerfile();
    let froms: Vec<&Instruction> = all.iter().filter(|i| i.keyword == "FROM").collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    let stages: Vec<&str> = froms.iter().filter_map(|f| stage_name(f)).collect();
    // The binaries are chosen by the target, never by an argument naming a
    // stage (`FROM ${ARG}`: BuildKit only; buildah cannot resolve it).
    assert!(
        !all.iter()
            .any(|i| i.keyword == "FROM" && i.args.contains('$')),
        "no FROM chooses a stage by argument: {froms:?}"
    );
    assert!(
        stages.contains(&"build") && stages.contains(&"prebuilt") && stages.contains(&"runtime"),
        "the stages: {stages:?}"
    );
    for from in &froms {
        let image = from.args.split_whitespace().next().unwrap();
        if image == "scratch" || stages.contains(&image) {
            continue;
        }
        let (name, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("base image `{image}` is not pinned by tag"));
        assert!(
            !name.is_empty() && !tag.is_empty() && tag != "latest",
            "base image `{image}` must be pinned by a tag other than latest"
        );
    }
    let build = froms
        .iter()
        .find(|f| stage_name(f) == Some("build"))
        .unwrap();
    assert!(
        build.args.starts_with("rust:"),
        "the build stage is a Rust image"
    );
    assert!(
        stage_name(froms.last().unwrap()).is_none(),
        "the default image is the last, unnamed stage"
    );
    // The default compiles (its binaries come from the build stage); the
    // prebuilt target takes the context's prebuilt/ folder.
    for (target, source) in [(None, "--from=build"), (Some("prebuilt"), "prebuilt/")] {
        let stage = image_of(&all, target);
        assert_eq!(
            stage[0].args, "debian:bookworm-slim AS runtime",
            "{target:?} starts from the runtime stage"
        );
        image_is_non_root_with_volume_healthcheck_and_labels(&stage, source);
    }

    // The build context never takes build output or keys.
    let ignore = read(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for pattern in ["target", ".git", "**/*.key"] {
        assert!(ignored.contains(pattern), ".dockerignore lacks {pattern}");
    }
}

/// What an image the Dockerfile builds must be, whichever the target; its
/// binaries are copied from `source`.
fn image_is_non_root_with_volume_healthcheck_and_labels(stage: &[&Instruction], source: &str) {
    // Non-root.
    let user = stage
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("the image sets USER");
    let name = user.args.split(':').next().unwrap();
    assert!(
        name != "root" && name.parse::<u32>() != Ok(0),
        "USER {} is root",
        user.args
    );

    // Volume, port, environment.
    let volumes: Vec<String> = stage
        .iter()
        .filter(|i| i.keyword == "VOLUME")
        .flat_map(|i| {
            if i.args.starts_with('[') {
                exec_form(&i.args)
            } else {
                i.args.split_whitespace().map(str::to_string).collect()
            }
        })
        .collect();
    assert_eq!(volumes, ["/data"], "VOLUME /data");
    assert!(
        stage.iter().any(|i| i.keyword == "EXPOSE"
            && i.args
                .split_whitespace()
                .any(|p| p == "3100" || p == "3100/tcp")),
        "EXPOSE 3100"
    );
    let env = stage_pairs(stage, "ENV");
    for (key, value) in [
        ("WAIAAS_CONTAINER", "1"),
        ("WAIAAS_DATA_DIR", "/data"),
        ("WAIAAS_DAEMON_HOSTNAME", "0.0.0.0"),
    ] {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(value),
            "ENV {key}={value}"
        );
    }
    // Every other WAIAAS_ variable must be one the config accepts.
    let config_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("WAIAAS_DAEMON_") || k.starts_with("WAIAAS_UPDATE_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Config::parse(None, Path::new("config.toml"), config_env)
        .unwrap_or_else(|e| panic!("the image's ENV is not a valid config: {e}"));

    // Health check without curl, and the entrypoint.
    let check = healthcheck(stage);
    assert_eq!(
        check,
        ["waiaas-launcher", "status", "--quiet"],
        "HEALTHCHECK"
    );
    assert!(
        !stage
            .iter()
            .any(|i| i.args.contains("curl") || i.args.contains("wget")),
        "no curl or wget in the image"
    );
    let entrypoint = stage
        .iter()
        .rev()
        .find(|i| i.keyword == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert_eq!(exec_form(&entrypoint.args), ["waiaas-launcher", "run"]);

    // Both binaries into one folder on the PATH.
    let copies: Vec<&&Instruction> = stage
        .iter()
        .filter(|i| i.keyword == "COPY" && i.args.contains(source))
        .collect();
    let folder = |binary: &str| {
        copies
            .iter()
            .find(|c| {
                c.args
                    .split_whitespace()
                    .any(|w| w.ends_with(&format!("/{binary}")))
            })
            .map(|c| {
                c.args
                    .split_whitespace()
                    .last()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_string()
            })
            .unwrap_or_else(|| panic!("no COPY {source}… of {binary}"))
    };
    assert_eq!(folder("waiaas-launcher"), folder("waiaas-daemon"));
    assert_eq!(folder("waiaas-launcher"), "/usr/local/bin");

    // OCI labels, the version from a build argument.
    let labels = stage_pairs(stage, "LABEL");
    for key in [
        "title",
        "description",
        "version",
        "revision",
        "created",
        "source",
        "licenses",
    ] {
        let key = format!("org.opencontainers.image.{key}");
        assert!(
            labels.get(&key).is_some_and(|v| !v.is_empty()),
            "LABEL {key}"
        );
    }
    assert_eq!(labels["org.opencontainers.image.version"], "${VERSION}");
    assert!(
        stage
            .iter()
            .any(|i| i.keyword == "ARG" && i.args.split('=').next() == Some("VERSION")),
        "ARG VERSION in the image's stages (an ARG before FROM is not visible there)"
    );
    let manifest = workspace_manifest();
    let package = &manifest["workspace"]["package"];
    assert_eq!(
        labels["org.opencontainers.image.source"],
        package["repository"].as_str().unwrap()
    );
    assert_eq!(
        labels["org.opencontainers.image.licenses"],
        package["license"].as_str().unwrap()
    );
}

#[test]
fn compose_keeps_a_named_volume_on_loopback_with_the_major_tag() {
    let compose: Value = serde_yaml_ng::from_str(&read("docker-compose.yml")).unwrap();
    let services = compose["services"].as_mapping().expect("services");
    assert_eq!(services.len(), 1, "one service");
    let (_, service) = services.iter().next().unwrap();

    // `${VAR:-default}` as compose resolves it with nothing set.
    let image = service["image"].as_str().expect("image");
    let mut resolved = String::new();
    let mut rest = image;
    while let Some(start) = rest.find("${") {
        resolved.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        resolved.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = &rest[end + 1..];
    }
    resolved.push_str(rest);
    let (repository, tag) = resolved.rsplit_once(':').expect("an image tag");
    let major = workspace_version().split('.').next().unwrap().to_string();
    assert_eq!(tag, major, "compose follows the major tag ({resolved})");
    let release = workflow("release.yml");
    let push = step(release.job("deploy"), "Push the image tags");
    assert!(
        step_env(push)["IMAGE"].contains(&format!("'{repository}'")),
        "compose's image {repository} is the one deploy pushes by default"
    );

    let ports: Vec<&str> = service["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| p.as_str().expect("short port syntax"))
        .collect();
    assert_eq!(
        ports,
        ["127.0.0.1:3100:3100"],
        "the API on the host's loopback only"
    );

    let volumes = service["volumes"].as_sequence().expect("volumes");
    let data = volumes
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| v.strip_suffix(":/data"))
        .expect("a volume at /data");
    assert!(
        compose["volumes"].get(data).is_some(),
        "/data is the named volume `{data}` (declared under volumes:), not a bind mount"
    );

    let restart = service["restart"].as_str().expect("a restart policy");
    assert!(
        ["unless-stopped", "always", "on-failure"].contains(&restart),
        "restart: {restart}"
    );
    let grace = seconds(
        service["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    let default_shutdown = Config::default().daemon.shutdown_timeout;
    assert!(
        grace > default_shutdown + 2,
        "stop_grace_period {grace}s must outlast the default shutdown_timeout ({default_shutdown}s) plus the launcher's 2 s grace"
    );
}

// ---------------------------------------------------------------------------
// systemd

#[test]
fn systemd_unit_prevents_restart_on_permanent_codes() {
    let service = unit("packaging/systemd/waiaas.service");
    let prevented: BTreeSet<i32> = service
        .get("Service.RestartPreventExitStatus")
        .expect("RestartPreventExitStatus=")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|code| {
            code.parse()
                .unwrap_or_else(|_| panic!("exit code `{code}`"))
        })
        .collect();
    let permanent: BTreeSet<i32> = PERMANENT.into_iter().collect();
    assert_eq!(
        prevented, permanent,
        "RestartPreventExitStatus= must list exactly waiaas_shared::exit::daemon::PERMANENT"
    );
    assert!(
        !service.contains_key("Service.SuccessExitStatus"),
        "a permanent refusal is a failure, not a success"
    );
    assert_eq!(one(&service, "Service.Restart"), "on-failure");
    assert_eq!(one(&service, "Service.Type"), "notify");
    assert_eq!(one(&service, "Service.NotifyAccess"), "main");
    assert_eq!(
        one(&service, "Service.KillMode"),
        "mixed",
        "SIGTERM to the launcher only: it stops the daemon itself"
    );
    assert_eq!(
        one(&service, "Service.ExecStart"),
        "/usr/local/bin/waiaas-launcher run"
    );
    assert!(
        service["Service.Environment"]
            .iter()
            .any(|e| e.trim_matches('"') == "WAIAAS_DATA_DIR=/var/lib/waiaas"),
        "Environment=WAIAAS_DATA_DIR=/var/lib/waiaas"
    );
    assert_eq!(one(&service, "Service.StateDirectory"), "waiaas");
    assert!(seconds(one(&service, "Service.WatchdogSec")) > 0);
}

#[test]
fn systemd_stop_and_start_timeouts_outlast_the_launchers_own() {
    let service = unit("packaging/systemd/waiaas.service");
    // The launcher waits shutdown_timeout, then 2 s, before it kills the daemon.
    let stop = seconds(one(&service, "Service.TimeoutStopSec"));
    assert!(accepts_shutdown_timeout(5), "the probe itself works");
    assert!(
        !accepts_shutdown_timeout(stop.saturating_sub(2)),
        "TimeoutStopSec={stop} does not outlast every shutdown_timeout the config \
         accepts plus the launcher's 2 s grace: systemd would SIGKILL a graceful stop"
    );
    // READY=1 comes after the daemon's hello (≤ 10 s), its ready (≤ health_timeout,
    // a migration at start included) and a healthy /health (≤ health_timeout).
    let start = seconds(one(&service, "Service.TimeoutStartSec"));
    let health = Config::default().update.health_timeout;
    assert!(
        start > 10 + 2 * health,
        "TimeoutStartSec={start} is shorter than a first start with the default health_timeout ({health}s)"
    );
}

#[test]
fn systemd_unit_is_hardened_and_the_socket_listens_on_loopback() {
    let service = unit("packaging/systemd/waiaas.service");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RestrictNamespaces", "yes"),
    ] {
        assert_eq!(one(&service, &format!("Service.{key}")), value, "{key}=");
    }
    let families: BTreeSet<&str> = one(&service, "Service.RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_UNIX", "AF_INET", "AF_INET6"]),
        "Unix sockets (admin socket, control channel, sd_notify) and TCP"
    );
    let filters = &service["Service.SystemCallFilter"];
    assert!(
        filters.iter().any(|f| f == "@system-service"),
        "SystemCallFilter=@system-service"
    );
    assert!(
        !filters
            .iter()
            .any(|f| f.starts_with('~') && f.contains("@process")),
        "the launcher forks, execs and prctl()s the daemon: @process must stay allowed"
    );
    assert_eq!(one(&service, "Service.CapabilityBoundingSet"), "");
    let user = one(&service, "Service.User");
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "User={user}"
    );

    let socket = unit("packaging/systemd/waiaas.socket");
    assert_eq!(one(&socket, "Socket.ListenStream"), "127.0.0.1:3100");
    assert_eq!(
        socket.get("Socket.Accept").map(Vec::as_slice),
        Some(&["no".to_string()][..]),
        "one listening socket handed to the launcher"
    );
}

// ---------------------------------------------------------------------------
// Release automation (scenarios 19–24)

#[test]
fn deploy_needs_every_quality_gate_and_production_environment() {
    let release = workflow("release.yml");
    // Started by the GitHub Release that merging the Release PR creates.
    let types: Vec<&str> = release.on()["release"]["types"]
        .as_sequence()
        .expect("on: release: types")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["published"],
        "release.yml runs on `release: published`"
    );
    let triggers: Vec<&str> = release
        .on()
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(triggers, ["release"], "nothing else starts a release");

    let deploy = release.job("deploy");
    assert_eq!(
        environment(deploy).as_deref(),
        Some("production"),
        "deploy waits for the production environment's reviewers (gate 2)"
    );
    assert!(
        deploy["if"].is_null(),
        "deploy runs only when every job it needs succeeded (no `if:` override)"
    );
    let needed = needs(deploy);
    let jobs = release.jobs();
    for (id, _) in &jobs {
        if id != "deploy" {
            assert!(
                needed.contains(id),
                "deploy must need `{id}`: every other job of release.yml is a gate"
            );
        }
    }
    for id in &needed {
        assert!(
            jobs.iter().any(|(j, _)| j == id),
            "deploy needs unknown job `{id}`"
        );
    }

    // The gates are what SPEC §9 names.
    let jobs_running = |what: &str| -> Vec<String> {
        jobs.iter()
            .filter(|(id, job)| id != "deploy" && text_of(job).contains(what))
            .map(|(id, _)| id.clone())
            .collect()
    };
    for gate in [
        "bash .ci/run",
        "cargo fmt --all -- --check",
        "cargo clippy --workspace --all-targets",
        "cargo llvm-cov",
        "--fail-under-lines",
        "docker/build-push-action",
        "packaging/pack",
        "--dry-run",
    ] {
        let found = jobs_running(gate);
        assert!(!found.is_empty(), "no quality gate runs `{gate}`");
        for id in found {
            assert!(
                needed.contains(&id),
                "deploy must need the gate `{id}` ({gate})"
            );
        }
    }

    // Nothing that publishes, pushes or signs with the release key can run
    // before the approval: those secrets live only in production jobs.
    for (id, job) in &jobs {
        let text = text_of(job);
        for secret in ["NPM_TOKEN", "DOCKER_TOKEN", "WAIAAS_RELEASE_SIGNING_KEY"] {
            if text.contains(&format!("secrets.{secret}")) {
                assert_eq!(
                    environment(job).as_deref(),
                    Some("production"),
                    "job `{id}` uses secrets.{secret} without waiting for the production approval"
                );
            }
        }
    }
}

#[test]
fn only_deploy_publishes_or_pushes() {
    let mut outside = Vec::new();
    let mut in_deploy = Vec::new();
    for wf in all_workflows() {
        for (id, job) in wf.jobs() {
            for step in steps(job) {
                for what in publications_of(step) {
                    if wf.file.ends_with("/release.yml") && id == "deploy" {
                        in_deploy.push(what);
                    } else {
                        outside.push(format!("{} job `{id}`: {what}", wf.file));
                    }
                }
            }
        }
    }
    assert!(
        outside.is_empty(),
        "only release.yml's deploy job may publish or push:\n{}",
        outside.join("\n")
    );
    // The scan sees deploy's own publishing, so it would see it elsewhere.
    assert!(
        in_deploy.iter().any(|w| w.contains("npm publish")),
        "deploy publishes the npm packages: {in_deploy:?}"
    );
    assert!(
        in_deploy.iter().any(|w| w.contains("docker push")),
        "deploy pushes the image: {in_deploy:?}"
    );
    // And the scanner itself recognises the forms it must.
    let probe: Value = serde_yaml_ng::from_str(
        "- run: npm publish dist/x.tgz --tag latest\n\
         - run: |\n    docker build -t x . && \\\n      docker push x:1\n\
         - uses: docker/build-push-action@v7\n  with:\n    push: true\n\
         - uses: docker/build-push-action@v7\n  with:\n    push: ${{ github.event_name == 'release' }}\n\
         - run: npm publish x.tgz --dry-run\n\
         - uses: docker/build-push-action@v7\n  with:\n    push: false\n",
    )
    .unwrap();
    let found: Vec<usize> = probe
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| publications_of(s).len())
        .collect();
    assert_eq!(found, [1, 1, 1, 1, 0, 0], "the scanner's own check");
}

#[test]
fn rc_versions_never_reach_latest() {
    let set = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>();

    let final_release = release_tags("v1.9.0", false).unwrap();
    assert!(!final_release.prerelease);
    assert_eq!(final_release.npm_dist_tag, "latest");
    assert_eq!(
        final_release
            .docker_tags
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        set(&["1.9.0", "1.9", "1", "latest"])
    );
    let two = release_tags("v2.0.0", false).unwrap();
    assert_eq!(two.npm_dist_tag, "latest");
    assert_eq!(
        two.docker_tags.iter().cloned().collect::<BTreeSet<_>>(),
        set(&["2.0.0", "2.0", "2", "latest"])
    );

    for (tag, marked) in [
        ("v1.9.0-rc.1", false),
        ("v1.9.0-rc.1", true),
        ("v2.0.0-rc.2", true),
        ("v2.1.0-beta.3", false),
        // A Release marked as a prerelease is one, whatever its version says.
        ("v1.9.0", true),
    ] {
        let rc = release_tags(tag, marked).unwrap();
        let version = tag.trim_start_matches('v');
        assert!(rc.prerelease, "{tag}");
        assert_eq!(
            rc.npm_dist_tag, "rc",
            "{tag} goes out under the rc dist-tag"
        );
        assert_eq!(
            rc.docker_tags.iter().cloned().collect::<BTreeSet<_>>(),
            set(&[version, "rc"]),
            "{tag}: no latest, major or minor image tag"
        );
        // What deploy does with that, once publishing is real (a 2.x rc),
        // and as a dry run before.
        for dry_run in [false, true] {
            let decided = ReleaseTags {
                dry_run,
                ..release_tags(tag, marked).unwrap()
            };
            let npm = deploy_npm(&decided);
            let published = publishes(&npm);
            assert_eq!(published.len(), 1 + TEST_TARGETS.len(), "{tag}: {npm:?}");
            for call in published {
                assert_eq!(arg_after(call, "--tag"), Some("rc"), "{tag}: {call:?}");
                assert!(
                    !call.iter().any(|a| a.contains("latest")),
                    "{tag}: {call:?}"
                );
            }
            let docker = deploy_docker(&decided);
            for call in &docker {
                let named = tags_named(call);
                assert!(
                    named.is_subset(&set(&[version, "rc"])),
                    "{tag}: docker {call:?} names {named:?}"
                );
                assert!(
                    !call
                        .iter()
                        .any(|a| a.ends_with(":latest") || a.ends_with(":1") || a.ends_with(":2")),
                    "{tag}: {call:?}"
                );
            }
        }
    }

    // The gate's dry-run publish follows meta's dist-tag too.
    let release = workflow("release.yml");
    let dry = step(release.job("package"), "npm publish --dry-run");
    assert_env(dry, "DIST_TAG", "${{ needs.meta.outputs.npm_dist_tag }}");
    assert!(script(dry).contains("--tag \"$DIST_TAG\""));

    // Tags that are not v<semver> stop the release.
    for bad in ["1.9.0", "v1.9", "v1.9.0+build.1", "vX", "v01.9.0"] {
        assert!(release_tags(bad, false).is_err(), "`{bad}` must be refused");
    }
}

#[test]
fn deploy_is_a_dry_run_before_2_0() {
    for (tag, dry_run) in [
        ("v1.8.1", true),
        ("v1.9.0", true),
        ("v1.99.7", true),
        ("v1.9.0-rc.1", true),
        ("v0.9.0", true),
        ("v2.0.0", false),
        ("v2.0.0-rc.1", false),
        ("v3.4.5", false),
        ("v10.0.0", false),
    ] {
        assert_eq!(
            release_tags(tag, false).unwrap().dry_run,
            dry_run,
            "{tag}: deploy is a dry run exactly while the major version is below 2"
        );
    }

    // 1.x: every npm publish is a --dry-run, and no image is pushed or tagged.
    let one = release_tags("v1.9.0", false).unwrap();
    let npm = deploy_npm(&one);
    let published = publishes(&npm);
    assert_eq!(published.len(), 1 + TEST_TARGETS.len(), "{npm:?}");
    for call in &published {
        assert!(
            call.iter().any(|a| a == "--dry-run"),
            "1.9.0 publishes for real: {call:?}"
        );
    }
    let docker = deploy_docker(&one);
    assert!(pushes(&docker).is_empty(), "1.9.0 pushes: {docker:?}");

    // 2.x: real publishing — platform packages first, then @waiaas/cli that
    // names them; the image under 2.0.0, 2.0, 2 and latest.
    let two = release_tags("v2.0.0", false).unwrap();
    let npm = deploy_npm(&two);
    let published = publishes(&npm);
    assert_eq!(published.len(), 1 + TEST_TARGETS.len(), "{npm:?}");
    for call in &published {
        assert!(
            !call.iter().any(|a| a == "--dry-run"),
            "2.0.0 is still a dry run: {call:?}"
        );
        assert_eq!(arg_after(call, "--tag"), Some("latest"));
    }
    let last = published.last().unwrap();
    assert!(
        last[2].ends_with(&npm_tarball_name(CLI_PACKAGE, "2.0.0")),
        "@waiaas/cli goes last: {published:?}"
    );
    let docker = deploy_docker(&two);
    let pushed = pushes(&docker);
    assert!(!pushed.is_empty(), "2.0.0 pushes the image: {docker:?}");
    let created: BTreeSet<String> = pushed.iter().flat_map(|c| tags_named(c)).collect();
    assert_eq!(
        created,
        ["2.0.0", "2.0", "2", "latest"].map(String::from).into(),
        "{docker:?}"
    );

    // Logging in to the image registry is skipped on a dry run as well.
    let release = workflow("release.yml");
    let deploy = release.job("deploy");
    for step in steps(deploy) {
        if step["uses"]
            .as_str()
            .is_some_and(|u| u.starts_with("docker/login-action"))
        {
            assert_eq!(
                step["if"].as_str().map(squash),
                Some(squash("needs.meta.outputs.dry_run == 'false'")),
                "docker login only when deploy is real"
            );
        }
    }
}

#[test]
fn release_please_bumps_the_workspace_version() {
    let config = json("release-please-config.json");
    let manifest = json(".release-please-manifest.json");
    let root = &config["packages"]["."];
    assert!(
        root.is_object(),
        "release-please-config.json: packages.\".\""
    );
    let setting = |key: &str| root.get(key).or_else(|| config.get(key)).cloned();
    assert_eq!(
        setting("release-type")
            .and_then(|v| v.as_str().map(str::to_string))
            .as_deref(),
        Some("simple")
    );

    // The version lives in [workspace.package]; every member inherits it.
    let version = workspace_version();
    assert_eq!(
        manifest["."].as_str(),
        Some(version.as_str()),
        ".release-please-manifest.json must hold Cargo.toml's workspace version"
    );
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let mut crates = BTreeSet::new();
    for member in members() {
        let text = read(&format!("{member}/Cargo.toml"));
        let table: toml::Table = text.parse().unwrap();
        let package = &table["package"];
        assert_eq!(
            package["version"]
                .as_table()
                .and_then(|t| t.get("workspace"))
                .and_then(toml::Value::as_bool),
            Some(true),
            "{member}/Cargo.toml must take version.workspace = true, so one bump moves every crate"
        );
        crates.insert(package["name"].as_str().unwrap().to_string());
    }

    let extra = setting("extra-files").expect("extra-files");
    let extra = extra.as_array().expect("extra-files is a list");
    let entry = |path: &str| {
        extra
            .iter()
            .find(|e| e["path"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("extra-files has no entry for {path}"))
    };
    let cargo_toml = entry("Cargo.toml");
    assert_eq!(cargo_toml["type"], "toml");
    assert_eq!(cargo_toml["jsonpath"], "$.workspace.package.version");
    // Cargo.lock carries the crates' versions too: without bumping them the
    // Release PR breaks every `--locked` build. Exactly our crates, by name.
    let lock = entry("Cargo.lock");
    assert_eq!(lock["type"], "toml");
    let path = lock["jsonpath"].as_str().unwrap();
    assert!(
        path.starts_with("$.package[?(") && path.ends_with(")].version"),
        "{path}"
    );
    let named: BTreeSet<String> = path
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert_eq!(
        named, crates,
        "the Cargo.lock filter must name exactly the workspace's crates"
    );
    let lock_text = read("Cargo.lock");
    for name in &crates {
        assert!(
            lock_text.contains(&format!("name = \"{name}\"\nversion = \"{version}\"")),
            "Cargo.lock has {name} at {version}"
        );
    }

    let changelog = setting("changelog-path")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "CHANGELOG.md".into());
    assert!(repo().join(&changelog).is_file(), "{changelog}");
    // Tags are v<version>: what release.yml's meta job accepts.
    assert_ne!(
        setting("include-v-in-tag"),
        Some(serde_json::Value::Bool(false))
    );
    assert_eq!(
        setting("include-component-in-tag"),
        Some(serde_json::Value::Bool(false))
    );
    assert_eq!(
        setting("prerelease"),
        Some(serde_json::Value::Bool(true)),
        "an rc's GitHub Release is marked as a prerelease"
    );

    // The workflow that runs it: on main, with these two files.
    let wf = workflow("release-please.yml");
    let branches: Vec<&str> = wf.on()["push"]["branches"]
        .as_sequence()
        .expect("on: push: branches")
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(branches, ["main"]);
    let (_, job) = wf.jobs().into_iter().next().unwrap();
    let action = steps(job)
        .into_iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("googleapis/release-please-action@v"))
        })
        .expect("a googleapis/release-please-action@vN step");
    assert_eq!(action["with"]["config-file"], "release-please-config.json");
    assert_eq!(
        action["with"]["manifest-file"],
        ".release-please-manifest.json"
    );
    assert_eq!(job["permissions"]["contents"], "write");
    assert_eq!(job["permissions"]["pull-requests"], "write");
}

#[test]
fn breaking_change_bumps_major() {
    // release-please's default versioning: BREAKING CHANGE / `!` → major,
    // feat → minor, anything else → patch. Its two pre-1.0 exceptions
    // (bump-minor-pre-major, bump-patch-for-minor-pre-major) and any other
    // versioning strategy would weaken that; a pinned release-as would
    // override it. (.ci/static-checks runs release-please's own code on this
    // config: `feat!:` and a BREAKING CHANGE footer give 2.0.0.)
    let config = json("release-please-config.json");
    let mut scopes = vec![("top level".to_string(), &config)];
    for (path, package) in config["packages"].as_object().expect("packages") {
        scopes.push((format!("packages.{path}"), package));
    }
    for (scope, settings) in scopes {
        let versioning = settings.get("versioning").and_then(|v| v.as_str());
        assert!(
            versioning.is_none_or(|v| v == "default"),
            "{scope}: versioning `{versioning:?}` does not bump majors on BREAKING CHANGE"
        );
        for key in ["bump-minor-pre-major", "bump-patch-for-minor-pre-major"] {
            assert_ne!(
                settings.get(key),
                Some(&serde_json::Value::Bool(true)),
                "{scope}: {key}"
            );
        }
        assert!(
            settings.get("release-as").is_none(),
            "{scope}: release-as pins the version"
        );
    }
    // Past 1.0 the pre-major rules could not apply anyway.
    let manifest = json(".release-please-manifest.json");
    let major: u64 = manifest["."]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(major >= 1);
    // PR titles may mark a breaking change with `!`.
    let commitlint = read(".github/commitlint.config.mjs");
    assert!(commitlint.contains("@commitlint/config-conventional"));
}

#[test]
fn no_tag_release_script() {
    let offenders: Vec<PathBuf> = repo_files()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.to_ascii_lowercase().contains("tag-release"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "release-please tags releases: {offenders:?}"
    );
    // Nor does any workflow tag by hand.
    for wf in all_workflows() {
        for (id, job) in wf.jobs() {
            for step in steps(job) {
                for command in step["run"].as_str().map(commands).unwrap_or_default() {
                    let padded = format!(" {command} ");
                    assert!(
                        !padded.contains(" git tag ")
                            && !padded.contains(" --tags ")
                            && !padded.contains(" gh release create "),
                        "{} job `{id}` makes tags or releases by hand: {command}",
                        wf.file
                    );
                }
            }
        }
    }
}

#[test]
fn pr_title_check_enforces_conventional_commits() {
    let wf = workflow("pr-title.yml");
    assert!(
        wf.on().get("pull_request_target").is_none(),
        "pull_request, not pull_request_target: the check needs no secrets"
    );
    let types: BTreeSet<&str> = wf.on()["pull_request"]["types"]
        .as_sequence()
        .expect("on: pull_request: types")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for needed in ["opened", "edited", "synchronize", "reopened"] {
        assert!(types.contains(needed), "re-checked when a PR is {needed}");
    }
    let jobs = wf.jobs();
    let lint = jobs
        .iter()
        .flat_map(|(_, job)| steps(job))
        .find(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.contains("commitlint") && !r.contains("npm install"))
        })
        .expect("a step running commitlint");
    let run = script(lint);
    assert!(
        run.contains("--config .github/commitlint.config.mjs"),
        "{run}"
    );
    assert!(run.contains("\"$TITLE\""), "the title is linted: {run}");
    assert_env(lint, "TITLE", "${{ github.event.pull_request.title }}");
    // No script interpolates the title (it is attacker-controlled text).
    for (_, job) in &jobs {
        for step in steps(job) {
            assert!(
                !step["run"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("pull_request.title"),
                "the PR title must reach scripts through env:, never pasted into them"
            );
        }
    }

    // The rule: conventional types, none disabled.
    let config = read(".github/commitlint.config.mjs");
    assert!(config.contains("extends: ['@commitlint/config-conventional']"));
    for rule in ["type-enum", "type-empty", "subject-empty"] {
        assert!(
            !config.contains(&format!("'{rule}': [0")),
            "{rule} must stay enforced"
        );
    }
    for kind in ["feat", "fix"] {
        assert!(config.contains(&format!("'{kind}'")), "type {kind}");
    }
    // The commitlint that CI runs is the one .ci/static-checks tests the rule with.
    let install = jobs
        .iter()
        .flat_map(|(_, job)| steps(job))
        .find_map(|s| s["run"].as_str().filter(|r| r.contains("npm install")))
        .expect("commitlint installed");
    let static_checks = read(".ci/static-checks");
    for package in ["@commitlint/cli@", "@commitlint/config-conventional@"] {
        let pinned = |text: &str| {
            text.split_whitespace()
                .find(|w| w.starts_with(package))
                .map(|w| w.trim_end_matches(')').to_string())
        };
        let in_ci = pinned(install).unwrap_or_else(|| panic!("pr-title.yml pins {package}"));
        assert_eq!(
            Some(in_ci.clone()),
            pinned(&static_checks),
            "pr-title.yml and .ci/static-checks must use the same {package}"
        );
    }
}

/// Releases ship binaries built with the `dist` profile (issue 12: half the
/// size), and only release builds pay for it: `release`, which the tests
/// build many times (testkit/src/builds.rs), stays cheap.
#[test]
fn releases_ship_the_dist_profile_which_the_tests_never_build() {
    let manifest = workspace_manifest();
    let dist = manifest["profile"]["dist"]
        .as_table()
        .expect("[profile.dist]");
    assert_eq!(dist["inherits"].as_str(), Some("release"));
    assert_eq!(dist["lto"].as_str(), Some("fat"));
    assert_eq!(dist["codegen-units"].as_integer(), Some(1));
    assert_eq!(dist["strip"].as_str(), Some("symbols"));
    assert!(dist.get("panic").is_none(), "panics must keep unwinding");
    let release = manifest["profile"]["release"]
        .as_table()
        .expect("[profile.release]");
    for key in ["lto", "codegen-units", "opt-level"] {
        assert!(
            release.get(key).is_none(),
            "[profile.release] sets {key}: the tests build release, so it belongs in [profile.dist]"
        );
    }

    let workflow = workflow("release.yml");
    let package = workflow.job("package");
    assert_eq!(
        commands(&script(step(package, "Build the release binaries"))),
        ["cargo build --profile dist --locked -p waiaas-launcher -p waiaas-daemon"]
    );
    let pack = script(step(package, "Pack and sign with a throwaway key"));
    assert!(pack.contains("--bin-dir target/dist "), "{pack}");
    let keep = script(step(package, "Keep the binaries for signing"));
    assert!(
        keep.contains("target/dist/waiaas-launcher target/dist/waiaas-daemon"),
        "{keep}"
    );

    // The image ships the same binaries: its build stage's profile is an
    // argument whose default is `dist`, and its output is that profile's.
    let all = dockerfile();
    let build_stage = image_of(&all, Some("build"));
    assert!(
        build_stage
            .iter()
            .any(|i| i.keyword == "ARG" && i.args == "PROFILE=dist"),
        "ARG PROFILE=dist in the build stage"
    );
    let build = build_stage
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("the Dockerfile builds the binaries");
    for needle in [
        "cargo build --profile \"$PROFILE\" --locked -p waiaas-launcher -p waiaas-daemon",
        "echo \"$PROFILE\"",
        "\"$out/waiaas-launcher\" \"$out/waiaas-daemon\"",
    ] {
        assert!(build.args.contains(needle), "{needle} in {}", build.args);
    }
}
