//! `sf-write --config job.toml [--cluster df://host:port]`: build and publish a snapshot.

fn main() -> std::process::ExitCode {
    sf_executor::write_cli::main(Some(sf_executor::cluster::engine::factory))
}
