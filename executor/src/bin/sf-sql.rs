//! `sf-sql [--config FILE] [--conf sf.catalog.NAME.KEY=VALUE]... SQL`: SQL over warehouse tables.

fn main() -> std::process::ExitCode {
    sf_executor::sql_cli::main(Some(sf_executor::cluster::engine::factory))
}
