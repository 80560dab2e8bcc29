//! `sf-scheduler`: a Ballista scheduler that can run ShardForge builds.

fn main() -> std::process::ExitCode {
    sf_executor::cluster::scheduler::main()
}
