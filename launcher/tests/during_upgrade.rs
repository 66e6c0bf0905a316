//! The supervisor keeps supervising while it hosts an upgrade: a daemon that
//! crashes during the preflight's download is replaced at once, `status`
//! answers with the step in progress, SIGTERM abandons the preflight with
//! nothing changed, and the download's bytes reach the operator's terminal.
//! A real `waiaas-launcher run`, a real `upgrade` command, and a registry on
//! 127.0.0.1 that sends the package slowly.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::registry::{Registry, Reply};
use testkit::supervisor::{Supervisor, daemon_pid, healthy, signal};
use testkit::{Install, hermetic};
use waiaas_shared::release::{CLI_PACKAGE, platform_package, this_target};

const TARGET_VERSION: &str = "1.9.0";

/// An install whose registry offers 1.9.0, its package sent as `reply`.
fn install_offering(reply: impl FnOnce(Vec<u8>) -> Reply) -> (Install, Registry) {
    let install = Install::new();
    let registry = Registry::start();
    // Never completed or never verifiable: the bytes only need to flow.
    let package: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    registry.publish(CLI_PACKAGE, TARGET_VERSION, b"cli".to_vec());
    let platform = platform_package(this_target().unwrap());
    registry.publish(&platform, TARGET_VERSION, package.clone());
    registry.serve(
        &Registry::tarball_path(&platform, TARGET_VERSION),
        reply(package),
    );
    let (_, key) = waiaas_packaging::generate_keypair(&install.home().join("keys")).unwrap();
    install.write_config(&format!(
        "[daemon]\nport = {}\nhostname = \"127.0.0.1\"\nupdate_check = false\nshutdown_timeout = 5\n\n\
         [update]\nregistry = \"{}\"\ntrusted_keys = [\"{key}\"]\n",
        install.port,
        registry.url()
    ));
    (install, registry)
}

/// Names under `versions/`, `current`'s target, and the database's tables
/// and wallets: what an abandoned preflight must leave as it was.
fn snapshot(install: &Install) -> (BTreeSet<String>, String, String) {
    let versions = fs::read_dir(install.dir.versions())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let current = fs::read_link(install.dir.current())
        .unwrap()
        .display()
        .to_string();
    let db = rusqlite::Connection::open(install.dir.database()).unwrap();
    let tables: String = db
        .query_row(
            "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master ORDER BY name)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let wallets: i64 = db
        .query_row("SELECT count(*) FROM wallets", [], |r| r.get(0))
        .unwrap();
    (versions, current, format!("{tables}; {wallets} wallets"))
}

fn start_upgrade(install: &Install, log: &Path) -> Child {
    install
        .launcher(&["upgrade", "--to", TARGET_VERSION])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until the supervisor reports step 1 and the registry has
/// been asked for the package.
fn wait_downloading(supervisor: &mut Supervisor, registry: &Registry) {
    let path = Registry::tarball_path(&platform_package(this_target().unwrap()), TARGET_VERSION);
    let status = supervisor.wait_for(Duration::from_secs(30), "a download", |s| {
        s.upgrade.as_ref().is_some_and(|p| p.step == 1) && registry.hits(&path) > 0
    });
    assert!(
        healthy(&status),
        "the daemon serves during the preflight: {status:?}"
    );
}

#[test]
fn during_a_preflight_download_a_crash_is_replaced_and_sigterm_abandons_it() {
    let (install, registry) = install_offering(|body| Reply::Trickle {
        body,
        chunk: 1,
        every: Duration::from_secs(1),
    });
    let mut supervisor = Supervisor::start(&install);
    let before = supervisor.wait_healthy();
    let snapshot_before = snapshot(&install);
    let log = install.home().join("upgrade.stderr");
    let mut upgrade = start_upgrade(&install, &log);
    wait_downloading(&mut supervisor, &registry);

    // A daemon killed during the download is replaced at once.
    let old = daemon_pid(&before);
    signal(old, libc::SIGKILL);
    let killed = Instant::now();
    let status = supervisor.wait_for(Duration::from_secs(10), "a replacement", |s| {
        healthy(s) && daemon_pid(s) != old
    });
    let replaced = killed.elapsed();
    eprintln!("a daemon killed during a preflight download was replaced in {replaced:?}");
    assert!(
        replaced < Duration::from_secs(1),
        "{replaced:?}\n{}",
        supervisor.log()
    );
    assert_eq!(
        status.upgrade.as_ref().map(|p| p.step),
        Some(1),
        "still downloading"
    );

    // SIGTERM abandons the preflight: the launcher exits in time, the
    // command is told, and nothing changed.
    let at = Instant::now();
    signal(supervisor.pid(), libc::SIGTERM);
    let exit = supervisor.wait_exit(Duration::from_secs(20));
    let took = at.elapsed();
    eprintln!("SIGTERM during a preflight download: the launcher exited in {took:?}");
    assert!(exit.success(), "{exit}\n{}", supervisor.log());
    assert!(
        took < Duration::from_secs(5 + 2),
        "{took:?}\n{}",
        supervisor.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = upgrade.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the upgrade command did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("abandoned"), "{said}");
    assert_eq!(snapshot(&install), snapshot_before, "nothing changed");
    assert!(!install.dir.upgrade_journal().exists());
}

#[test]
fn a_second_upgrade_and_a_restart_are_refused_while_one_runs() {
    let (install, registry) = install_offering(|body| Reply::Trickle {
        body,
        chunk: 1,
        every: Duration::from_secs(1),
    });
    let mut supervisor = Supervisor::start(&install).with_stop_grace(Duration::from_secs(10));
    supervisor.wait_healthy();
    let log = install.home().join("upgrade.stderr");
    let mut first = start_upgrade(&install, &log);
    wait_downloading(&mut supervisor, &registry);

    let second = testkit::run(&mut install.launcher(&["upgrade", "--to", TARGET_VERSION]));
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(second.stderr.contains("in progress"), "{second:?}");
    let restart = testkit::run(&mut install.launcher(&["restart"]));
    assert!(!restart.status.success(), "{restart:?}");
    assert!(restart.stderr.contains("in progress"), "{restart:?}");
    let status = testkit::run(&mut install.launcher(&["status", "--json"]));
    assert!(status.status.success(), "{status:?}");
    assert!(status.stdout.contains("\"upgrade\""), "{status:?}");
    drop(supervisor);
    let _ = first.kill();
    let _ = first.wait();
}

/// On a terminal, `upgrade` through a running supervisor draws a bar that
/// counts the download's bytes.
#[test]
fn upgrade_through_the_supervisor_draws_a_byte_counting_bar_on_a_terminal() {
    let (install, _registry) = install_offering(|body| Reply::Trickle {
        body,
        chunk: 4096,
        every: Duration::from_millis(100),
    });
    let mut supervisor = Supervisor::start(&install);
    supervisor.wait_healthy();
    let mut command = Command::new("script");
    let upgrade = format!(
        "{} upgrade --to {TARGET_VERSION} --data-dir {}",
        testkit::launcher_binary().display(),
        install.data_dir().display()
    );
    command
        .args(["-qefc", &upgrade, "/dev/null"])
        .env("COLUMNS", "120");
    let out = testkit::run(&mut hermetic(command, install.home()));
    // The package is not a signed release: the upgrade is refused after the
    // download, which is all this test needs.
    let screen = out.stdout.replace('\r', "\n");
    assert!(
        screen.contains("KiB/64.00 KiB") || screen.contains("KiB/64 KiB"),
        "no byte-counting bar:\n{screen}"
    );
    assert!(screen.contains("[1/7]"), "{screen}");
}
