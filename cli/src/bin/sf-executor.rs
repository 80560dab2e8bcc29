//! `sf-executor`: a Ballista executor that can run ShardForge shard tasks.

fn main() -> std::process::ExitCode {
    sf_cli::cluster::executor_main()
}
