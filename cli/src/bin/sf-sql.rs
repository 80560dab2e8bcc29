//! `sf-sql [--config FILE] [--conf sf.catalog.NAME.KEY=VALUE]... SQL`: SQL over warehouse tables.

fn main() -> std::process::ExitCode {
    sf_cli::sql::main()
}
