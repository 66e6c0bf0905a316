//! `waiaas-launcher`: the work is in the library (`src/lib.rs` gives the tour).

fn main() -> std::process::ExitCode {
    waiaas_launcher::entry::delegate_to_newer();
    waiaas_launcher::cli::run(waiaas_launcher::cli::parse())
}
