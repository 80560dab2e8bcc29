//! `sf-serve --snapshot NAME=URL`: the lookup service over HTTP and gRPC.

fn main() -> std::process::ExitCode {
    sf_cli::serve::main()
}
