//! The registry's answers: a packument (`Packument::parse`, then `dist` of
//! every version it lists) and a dist-tags object (`pick_tag`). Both read the
//! same input: the corpus holds both kinds of document.

#![no_main]

use libfuzzer_sys::fuzz_target;
use waiaas_shared::registry::{Packument, pick_tag};
use waiaas_shared::release::CLI_PACKAGE;
use waiaas_shared::version::allowed_on_channel;

fuzz_target!(|data: &[u8]| {
    for name in [CLI_PACKAGE, "@waiaas/cli-linux-x64"] {
        if let Ok(packument) = Packument::parse(data, name) {
            assert_eq!(packument.name, name);
            for version in packument.versions.keys() {
                assert!(packument.has_version(version));
                if let Ok(dist) = packument.dist(version) {
                    assert!(
                        dist.tarball.starts_with("http://") || dist.tarball.starts_with("https://"),
                        "dist accepted a tarball URL that is not http(s): {}",
                        dist.tarball
                    );
                }
            }
        }
    }
    for channel in ["latest", "next", "rc"] {
        if let Ok(version) = pick_tag(data, channel) {
            // What a channel offers is what the daemon's check would offer.
            assert!(
                allowed_on_channel(&version, channel),
                "{channel}: {version}"
            );
        }
    }
});
