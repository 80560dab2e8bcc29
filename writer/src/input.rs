//! Reading the job's input into a DataFusion DataFrame.

use std::collections::BTreeSet;

use datafusion::dataframe::DataFrame;
use datafusion::prelude::{CsvReadOptions, NdJsonReadOptions, ParquetReadOptions, SessionContext};
use sf_manifest::StorageOptions;

use crate::config::{CsvOptions, InputConfig, InputFormat};
use crate::error::{Error, Result};

/// Registers the object stores every remote URL of the input needs (by
/// scheme and bucket), so DataFusion reads them with our settings.
pub fn register_stores(ctx: &SessionContext, urls: &[&str], options: &StorageOptions) -> Result<()> {
    let mut done = BTreeSet::new();
    for url in urls {
        if !url.contains("://") || url.starts_with("file://") {
            continue;
        }
        let parsed = url::Url::parse(url).map_err(|e| Error::config(url.to_string(), e.to_string()))?;
        let base = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or(""));
        if !done.insert(base.clone()) {
            continue;
        }
        let location =
            sf_manifest::resolve(&base, options).map_err(|e| Error::config(url.to_string(), e.to_string()))?;
        let base_url = url::Url::parse(&base).map_err(|e| Error::config(url.to_string(), e.to_string()))?;
        ctx.register_object_store(&base_url, location.store);
    }
    Ok(())
}

/// Every URL the input reads.
pub fn input_urls(input: &InputConfig) -> Vec<&str> {
    input
        .path
        .as_deref()
        .into_iter()
        .chain(input.tables.values().map(|t| t.path.as_str()))
        .collect()
}

/// The file extension DataFusion should list: the path's own when it names
/// a file (`data.pq`), else the format's usual one.
fn extension_for<'a>(path: &'a str, default: &'a str) -> &'a str {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if last.contains('*') || last.contains('?') || last.contains('[') {
        return "";
    }
    let local = std::path::Path::new(path);
    if !path.contains("://") && local.is_dir() {
        return default;
    }
    match last.rfind('.') {
        Some(i) if i > 0 => &last[i..],
        _ => default,
    }
}

fn csv_options<'a>(path: &'a str, csv: &CsvOptions) -> CsvReadOptions<'a> {
    CsvReadOptions::new()
        .has_header(csv.has_header)
        .delimiter(csv.delimiter as u8)
        .file_extension(extension_for(path, ".csv"))
}

fn not_found_hint(path: &str, e: datafusion::error::DataFusionError) -> Error {
    if !path.contains("://") && !std::path::Path::new(path.split(['*', '?', '[']).next().unwrap_or(path)).exists() {
        return Error::Input(format!("input {path} does not exist"));
    }
    // A storage failure stays a storage failure (retried, exit 5); only
    // what the input holds is bad input.
    match Error::from(e) {
        Error::Input(msg) => Error::Input(format!("reading {path}: {msg}")),
        other => other,
    }
}

/// Fails, naming `path`, when it matches no file (a glob that matches
/// nothing, an empty folder, a file that is not there): DataFusion would
/// read such a path as a table without columns.
async fn require_files(ctx: &SessionContext, path: &str, extension: &str) -> Result<()> {
    use datafusion::datasource::listing::ListingTableUrl;
    use futures::StreamExt;
    let missing = |why: String| Error::Input(format!("input {path}: {why}"));
    let url = ListingTableUrl::parse(path).map_err(|e| Error::config("input.path", format!("{path}: {e}")))?;
    let store = ctx
        .runtime_env()
        .object_store(&url)
        .map_err(|e| Error::config("input.path", format!("{path}: {e}")))?;
    let state = ctx.state();
    let mut files = match url.list_all_files(&state, store.as_ref(), extension).await {
        Ok(f) => f,
        Err(e) => return Err(not_found_hint(path, e)),
    };
    match files.next().await {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(not_found_hint(path, e)),
        None if extension.is_empty() => Err(missing("matches no files".into())),
        None => Err(missing(format!("matches no files (looking for *{extension})"))),
    }
}

/// Reads one file set.
async fn read(ctx: &SessionContext, format: InputFormat, path: &str, csv: &CsvOptions) -> Result<DataFrame> {
    let extension = match format {
        InputFormat::Parquet => extension_for(path, ".parquet"),
        InputFormat::Csv => extension_for(path, ".csv"),
        InputFormat::Json => extension_for(path, ".json"),
        InputFormat::Sql => {
            return Err(Error::Internal("an input table is parquet, csv or json".into()));
        }
    };
    require_files(ctx, path, extension).await?;
    let df = match format {
        InputFormat::Parquet => {
            let opts = ParquetReadOptions::default().file_extension(extension_for(path, ".parquet"));
            ctx.read_parquet(path, opts).await
        }
        InputFormat::Csv => ctx.read_csv(path, csv_options(path, csv)).await,
        InputFormat::Json => {
            let opts = NdJsonReadOptions::default().file_extension(extension_for(path, ".json"));
            ctx.read_json(path, opts).await
        }
        InputFormat::Sql => {
            return Err(Error::Internal("an input table is parquet, csv or json".into()));
        }
    };
    df.map_err(|e| not_found_hint(path, e))
}

/// The input as a DataFrame.
pub async fn load(ctx: &SessionContext, input: &InputConfig) -> Result<DataFrame> {
    match input.format {
        InputFormat::Sql => {
            for (name, t) in &input.tables {
                let df = read(ctx, t.format, &t.path, &t.csv).await?;
                ctx.register_table(name.as_str(), df.into_view())
                    .map_err(|e| Error::engine_caused(format!("registering table {name}"), e))?;
            }
            let sql = input.sql.as_deref().unwrap_or_default();
            ctx.sql(sql).await.map_err(|e| match Error::from(e) {
                Error::Input(msg) => Error::Input(format!("input.sql: {msg}")),
                other => other,
            })
        }
        format => {
            let path = input
                .path
                .as_deref()
                .ok_or_else(|| Error::config("input.path", "missing"))?;
            read(ctx, format, path, &input.csv).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_follow_the_path() {
        assert_eq!(extension_for("/data/users.pq", ".parquet"), ".pq");
        assert_eq!(extension_for("s3://b/x/part-0.parquet", ".parquet"), ".parquet");
        assert_eq!(extension_for("s3://b/x/", ".parquet"), ".parquet");
        assert_eq!(extension_for("/data/*.csv", ".csv"), "");
        assert_eq!(extension_for("s3://b/folder", ".json"), ".json");
    }
}
