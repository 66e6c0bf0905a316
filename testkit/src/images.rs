//! The repository's Dockerfile built into the container tier's images, both
//! ways the README documents: the default (`podman build .`, compiled from
//! source in its Rust stage, whose `rust:X.Y-bookworm` is `.ci/container-images`'
//! local copy of this machine's toolchain) and `--target prebuilt` (the
//! binaries under test, as the release workflow builds it from the package
//! job's). `--format docker` keeps the `HEALTHCHECK`; `--pull=never`: no image
//! registry is reachable.

// container.rs builds prebuilt images only, kubernetes.rs both kinds.

use std::fs;
use std::path::Path;
use std::time::Instant;

use crate::builds;
use crate::podman::{BASE_IMAGE, Podman};

/// Where an image's binaries come from.
pub enum Binaries<'a> {
    /// The default target: compiled from the workspace's sources, with
    /// `--build-arg PROFILE=dev` (the Dockerfile's knob): a cold `dist` build
    /// (fat LTO) takes minutes more than CI's time allows; the profile
    /// changes the compiler's settings, not a stage or a step. Cargo inside
    /// fetches crates, so the build uses the host's network.
    Source,
    /// `--target prebuilt`, from this bin dir's `waiaas-launcher` and
    /// `waiaas-daemon`.
    Prebuilt(&'a Path),
}

/// Builds the repository's Dockerfile as `tag` (labelled `version`); `tag`.
pub fn build(podman: &Podman, tag: &str, binaries: Binaries, version: &str) -> String {
    let dockerfile = builds::repo_root().join("Dockerfile");
    let version_arg = format!("VERSION={version}");
    let mut args = vec![
        "build",
        "--quiet",
        "--format",
        "docker",
        "--pull=never",
        "--build-arg",
        &version_arg,
        "--file",
        dockerfile.to_str().unwrap(),
        "--tag",
        tag,
    ];
    // Kept until the build has run.
    let context = tempfile::tempdir().unwrap();
    let (what, context_dir) = match binaries {
        Binaries::Source => {
            args.extend(["--network", "host", "--build-arg", "PROFILE=dev"]);
            ("from source", builds::repo_root())
        }
        Binaries::Prebuilt(bin_dir) => {
            let prebuilt = builds::copy_bin_dir(bin_dir, &context.path().join("prebuilt"));
            // The host's bundle: it is what this machine trusts (a test image only).
            fs::copy(
                "/etc/ssl/certs/ca-certificates.crt",
                prebuilt.join("ca-certificates.crt"),
            )
            .expect("the host's CA bundle");
            args.extend(["--target", "prebuilt"]);
            ("prebuilt", context.path().to_path_buf())
        }
    };
    args.push(context_dir.to_str().unwrap());
    let started = Instant::now();
    podman.ok(&args);
    let size = |image: &str| {
        podman
            .ok(&["image", "inspect", "--format", "{{.Size}}", image])
            .parse::<u64>()
            .unwrap_or(0)
    };
    let (image, base) = (size(tag), size(BASE_IMAGE));
    // The base is a debootstrap minbase, larger than Docker Hub's slim image:
    // what the Dockerfile adds is the figure that carries over.
    eprintln!(
        "built {tag} ({what}) in {:?}: {} MB, {} MB over the base image",
        started.elapsed(),
        image / 1_000_000,
        image.saturating_sub(base) / 1_000_000
    );
    tag.to_string()
}
