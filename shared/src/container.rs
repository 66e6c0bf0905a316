//! The WAIaaS container image (`WAIAAS_CONTAINER=1`), where the image — not
//! `versions/` — holds the programs, and an upgrade is a newer image: both
//! processes say so in what they tell an operator to do.

/// Whether this process runs inside the WAIaaS container image.
pub fn in_container() -> bool {
    std::env::var_os("WAIAAS_CONTAINER").is_some_and(|v| v == "1")
}

/// How an operator moves this installation to a newer release.
pub fn how_to_upgrade() -> &'static str {
    if in_container() {
        "run the newer release's image on this volume (`docker compose pull && docker compose up -d`, \
         or a newer image tag on Kubernetes)"
    } else {
        "run `waiaas-launcher upgrade`"
    }
}
