//! `waiaas-pack`: builds the signed WAIaaS npm packages (see the library docs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waiaas_packaging::{PackOptions, generate_keypair, pack};

/// Build the @waiaas/cli npm tarballs from built binaries and sign release.json.
#[derive(Parser)]
#[command(
    name = "waiaas-pack",
    version,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Folder holding the built waiaas-launcher and waiaas-daemon.
    #[arg(long, value_name = "DIR", required = true)]
    bin_dir: Option<PathBuf>,
    /// Where to write the two .tgz files.
    #[arg(long, value_name = "DIR", required = true)]
    out: Option<PathBuf>,
    /// Unencrypted minisign secret key file that signs release.json.
    #[arg(long, value_name = "FILE", required = true)]
    sign_key: Option<PathBuf>,
    /// The binaries' platform, npm style (default: this machine's).
    #[arg(long, value_name = "OS-CPU")]
    target: Option<String>,
    /// Another platform @waiaas/cli should list in optionalDependencies (repeatable).
    #[arg(long = "also-target", value_name = "OS-CPU")]
    also_targets: Vec<String>,
    /// Staged rollout: installations upgrading by themselves spread their
    /// upgrades over this long after publishing (e.g. 48h, 30m, 2d, 0s).
    #[arg(long, value_name = "DURATION", value_parser = waiaas_packaging::parse_rollout)]
    rollout: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an unencrypted minisign key pair (waiaas-release.key / .pub) in DIR.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("waiaas-pack: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    if let Some(Command::Keygen { out }) = cli.command {
        let (secret, public) = generate_keypair(&out).map_err(|e| e.to_string())?;
        println!("secret key: {}", secret.display());
        println!(
            "public key file: {}",
            secret
                .with_file_name(waiaas_packaging::PUBLIC_KEY_FILE)
                .display()
        );
        println!("public key: {public}");
        eprintln!(
            "Keep the secret key out of the repository (a CI secret); add the public key to \
             the launcher's built-in release keys or to [update] trusted_keys."
        );
        return Ok(());
    }
    let target = match cli.target {
        Some(target) => target,
        None => waiaas_shared::release::this_target()
            .ok_or("cannot tell this machine's target; pass --target")?
            .to_string(),
    };
    let opts = PackOptions {
        bin_dir: cli.bin_dir.expect("required by clap"),
        out_dir: cli.out.expect("required by clap"),
        sign_key: cli.sign_key.expect("required by clap"),
        target,
        also_targets: cli.also_targets,
        rollout_seconds: cli.rollout,
    };
    let packed = pack(&opts).map_err(|e| e.to_string())?;
    println!("{} {}", packed.cli_tarball.display(), packed.cli_integrity);
    println!(
        "{} {}",
        packed.platform_tarball.display(),
        packed.platform_integrity
    );
    println!("public key: {}", packed.public_key);
    Ok(())
}
