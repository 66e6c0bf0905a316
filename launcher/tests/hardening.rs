//! The security review's findings about local files, descriptors, sockets
//! and registry URLs, against the real binaries: private folders and files at
//! every start, nothing inherited reaching the daemon, a client that talks
//! only to its own user's supervisor, and registries that must be https
//! (or loopback http), decided before any connection — and https that works,
//! with certificates checked, on the binaries' one TLS stack.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::Install;
use testkit::registry::{Registry, Reply, TestCa};
use testkit::supervisor::{Supervisor, daemon_pid};
use waiaas_shared::release::CLI_PACKAGE;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn folders_left_wide_are_private_again_and_files_are_the_owners_alone() {
    let install = Install::new();
    for folder in [
        install.data_dir().to_path_buf(),
        install.dir.run(),
        install.dir.data(),
    ] {
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut supervisor = Supervisor::start(&install);
    supervisor.wait_healthy();
    for folder in [
        install.data_dir().to_path_buf(),
        install.dir.run(),
        install.dir.data(),
    ] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
    assert_eq!(mode(&install.dir.database()), 0o600);
    let wal = format!("{}-wal", install.dir.database().display());
    assert_eq!(
        mode(Path::new(&wal)),
        0o600,
        "the WAL takes the database's mode"
    );
    assert_eq!(mode(&install.dir.launcher_socket()), 0o600);
}

/// A descriptor the launcher inherited without close-on-exec (a parent's
/// leak) stays in the launcher but never reaches the daemon.
#[test]
fn an_inherited_descriptor_does_not_reach_the_daemon() {
    let install = Install::new();
    let leaked = install.home().join("leaked-descriptor");
    let file = fs::File::create(&leaked).unwrap();
    // SAFETY: clears close-on-exec on a descriptor this test owns.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) };
    let mut supervisor = Supervisor::start(&install);
    let daemon = daemon_pid(&supervisor.wait_healthy());
    let points_at_leak = |pid: i32| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == leaked))
    };
    assert!(
        points_at_leak(supervisor.pid()),
        "the test's leak did not reach the launcher: the test proves nothing"
    );
    assert!(
        !points_at_leak(daemon),
        "the daemon holds the leaked descriptor"
    );
    drop(file);
}

/// A socket at the admin path that another user made is not our
/// supervisor: the command refuses to send it anything.
#[test]
fn the_client_refuses_a_socket_owned_by_another_user() {
    if !is_root() {
        eprintln!("skipped: needs root to make a socket owned by another uid (runs in .ci/run)");
        return;
    }
    let install = Install::new();
    let socket = install.dir.launcher_socket();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
    let out = testkit::run(&mut install.launcher(&["status"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("belongs to uid 65534"),
        "{}",
        out.stderr
    );
    assert!(
        listener.accept().is_err(),
        "the command connected to a socket that is not its supervisor's"
    );
}

fn install_with_registry(url: &str) -> Install {
    let install = Install::new();
    install.write_config(&format!(
        "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = false\n\n\
         [update]\nregistry = \"{url}\"\n",
        install.port
    ));
    install
}

/// Plain http:// off loopback is refused on the URL alone: the address
/// (TEST-NET-1, never routed) is not contacted, so the refusal is immediate.
#[test]
fn a_plain_http_registry_off_loopback_is_refused_before_any_connection() {
    let install = install_with_registry("http://192.0.2.1:9/");
    let started = Instant::now();
    let out = testkit::run(&mut install.launcher(&["upgrade", "--check"]));
    let took = started.elapsed();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("allow_insecure_registry"),
        "{}",
        out.stderr
    );
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}: was a connection tried?"
    );
}

/// A loopback registry that redirects to plain http:// elsewhere: the
/// redirect is refused before it is followed.
#[test]
fn a_redirect_to_plain_http_off_loopback_is_refused() {
    let registry = Registry::start();
    registry.publish(CLI_PACKAGE, "9.9.9", b"cli".to_vec());
    let packument = Registry::packument_path(CLI_PACKAGE);
    registry.serve(
        &packument,
        Reply::Redirect("http://192.0.2.1:9/packument".into()),
    );
    let install = install_with_registry(registry.url());
    let started = Instant::now();
    let out = testkit::run(&mut install.launcher(&["upgrade", "--check"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("refused a redirect"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(registry.hits(&packument), 1);
}

/// `upgrade --check` with `SSL_CERT_FILE` naming `ca_file` (and no other CA):
/// on Linux the platform verifier takes its roots from there.
/// `upgrade --check --json` trusting only the certificates in `ca_file`.
fn check_trusting(install: &Install, ca_file: &Path) -> testkit::Outcome {
    testkit::run(
        install
            .launcher(&["upgrade", "--check", "--json"])
            .env("SSL_CERT_FILE", ca_file)
            .env_remove("SSL_CERT_DIR"),
    )
}

/// The shipped TLS stack (rustls on ring, nothing else linked) reaches an
/// https registry whose certificate a trusted CA issued.
#[test]
fn an_https_registry_is_reached_on_the_shipped_tls_stack() {
    let ca = TestCa::new();
    let registry = Registry::start_tls(&ca);
    registry.publish(CLI_PACKAGE, "9.9.9", b"cli".to_vec());
    assert!(registry.url().starts_with("https://127.0.0.1:"));
    let install = install_with_registry(registry.url());
    let ca_file = install.home().join("ca.pem");
    fs::write(&ca_file, &ca.cert_pem).unwrap();

    let out = check_trusting(&install, &ca_file);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["latest"], "9.9.9", "{}", out.stdout);
    assert_eq!(registry.hits(&Registry::packument_path(CLI_PACKAGE)), 1);
}

/// A registry on plain http (here on loopback) is reached on a machine with
/// no CA bundle at all, as a minimal container or chroot is: no certificate
/// authority is needed for it, so none is loaded.
#[test]
fn an_http_registry_is_reached_without_a_ca_bundle() {
    let registry = Registry::start();
    registry.publish(CLI_PACKAGE, "9.9.9", b"cli".to_vec());
    let install = install_with_registry(registry.url());
    let empty = install.home().join("no-ca.pem");
    fs::write(&empty, "").unwrap();
    let out = check_trusting(&install, &empty);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["latest"], "9.9.9", "{}", out.stdout);
}

/// A certificate no trusted CA issued is refused in the handshake: no/// A certificate no trusted CA issued is refused in the handshake: no
/// request reaches the registry.
#[test]
fn an_https_registry_with_an_untrusted_certificate_is_refused() {
    let registry = Registry::start_tls(&TestCa::new());
    registry.publish(CLI_PACKAGE, "9.9.9", b"cli".to_vec());
    let install = install_with_registry(registry.url());
    let other_ca = install.home().join("other-ca.pem");
    fs::write(&other_ca, TestCa::new().cert_pem).unwrap();

    let out = check_trusting(&install, &other_ca);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
    assert_eq!(registry.total_hits(), 0);
}
