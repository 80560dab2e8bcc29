//! `sf-read`: see `sf-read --help` and the `sf_reader::cli` docs.

fn main() -> std::process::ExitCode {
    sf_reader::cli::main()
}
