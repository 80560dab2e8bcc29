//! `sf-write --config job.toml [--cluster df://host:port]`: build and publish a snapshot.

fn main() -> std::process::ExitCode {
    sf_cli::write::main()
}
