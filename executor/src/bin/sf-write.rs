//! `sf-write --config job.toml`: build and publish a snapshot.

fn main() -> std::process::ExitCode {
    sf_executor::write_cli::main(None)
}
