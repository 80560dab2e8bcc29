//! `sf-scheduler`: a Ballista scheduler that can run ShardForge builds.

fn main() -> std::process::ExitCode {
    sf_cli::cluster::scheduler_main()
}
