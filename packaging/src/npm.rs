//! The two npm packages' `package.json` files and the fixed files of `@waiaas/cli`.

use std::collections::BTreeMap;

use serde::Serialize;
use waiaas_shared::release::{CLI_PACKAGE, MANIFEST, SIGNATURE, npm_os_cpu, platform_package};

use crate::PackError;

/// The `bin` shim of `@waiaas/cli` (`package/bin/waiaas-launcher.js`).
pub const CLI_SHIM: &str = include_str!("../npm/cli/bin/waiaas-launcher.js");
/// The README of `@waiaas/cli`.
pub const CLI_README: &str = include_str!("../npm/cli/README.md");
/// The shim's path inside `@waiaas/cli`.
pub const CLI_SHIM_PATH: &str = "bin/waiaas-launcher.js";
/// The Node versions the shim runs on.
pub const NODE_ENGINES: &str = ">=18";

const LICENSE: &str = env!("CARGO_PKG_LICENSE");

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlatformPackageJson<'a> {
    name: String,
    version: &'a str,
    description: String,
    license: &'a str,
    os: [&'a str; 1],
    cpu: [&'a str; 1],
    files: [&'a str; 3],
    prefer_unplugged: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CliPackageJson<'a> {
    name: &'a str,
    version: &'a str,
    description: &'a str,
    license: &'a str,
    bin: BTreeMap<&'a str, &'a str>,
    files: [&'a str; 2],
    engines: BTreeMap<&'a str, &'a str>,
    optional_dependencies: BTreeMap<String, &'a str>,
}

/// `package.json` of `@waiaas/cli-<target>@version`.
pub(crate) fn platform_package_json(target: &str, version: &str) -> Result<Vec<u8>, PackError> {
    let (os, cpu) = npm_os_cpu(target).expect("a checked target");
    to_json(&PlatformPackageJson {
        name: platform_package(target),
        version,
        description: format!(
            "WAIaaS launcher and daemon binaries for {target} (installed by {CLI_PACKAGE})"
        ),
        license: LICENSE,
        os: [os],
        cpu: [cpu],
        files: ["bin/", MANIFEST, SIGNATURE],
        prefer_unplugged: true,
    })
}

/// `package.json` of `@waiaas/cli@version`, depending on each target's
/// platform package at exactly `version`.
pub(crate) fn cli_package_json(targets: &[String], version: &str) -> Result<Vec<u8>, PackError> {
    to_json(&CliPackageJson {
        name: CLI_PACKAGE,
        version,
        description: "WAIaaS launcher: runs and safely upgrades the self-hosted WAIaaS daemon",
        license: LICENSE,
        bin: BTreeMap::from([("waiaas-launcher", CLI_SHIM_PATH)]),
        files: ["bin/", "README.md"],
        engines: BTreeMap::from([("node", NODE_ENGINES)]),
        optional_dependencies: targets
            .iter()
            .map(|t| (platform_package(t), version))
            .collect(),
    })
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, PackError> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}
