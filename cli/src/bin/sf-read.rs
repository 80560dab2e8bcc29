//! `sf-read --current-url URL COMMAND`: reads and admin of a published snapshot.

fn main() -> std::process::ExitCode {
    sf_cli::read::main()
}
