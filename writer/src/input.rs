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

fn csv_options<'a>(csv: &CsvOptions) -> CsvReadOptions<'a> {
    CsvReadOptions::new()
        .has_header(csv.has_header)
        .delimiter(csv.delimiter as u8)
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

/// The files `path` matches, with their sizes; fails, naming `path`, when
/// it matches none (a glob that matches nothing, an empty folder, a file
/// that is not there): DataFusion would read such a path as a table
/// without columns.
async fn list_files(ctx: &SessionContext, path: &str, extension: &str) -> Result<Vec<(String, u64)>> {
    use datafusion::datasource::listing::ListingTableUrl;
    use futures::TryStreamExt;
    let missing = |why: String| Error::Input(format!("input {path}: {why}"));
    let url = ListingTableUrl::parse(path).map_err(|e| Error::config("input.path", format!("{path}: {e}")))?;
    let store = ctx
        .runtime_env()
        .object_store(&url)
        .map_err(|e| Error::config("input.path", format!("{path}: {e}")))?;
    let state = ctx.state();
    let files = match url.list_all_files(&state, store.as_ref(), extension).await {
        Ok(f) => f,
        Err(e) => return Err(not_found_hint(path, e)),
    };
    let metas: Vec<_> = files.try_collect().await.map_err(|e| not_found_hint(path, e))?;
    if metas.is_empty() {
        return Err(if extension.is_empty() {
            missing("matches no files".into())
        } else {
            missing(format!("matches no files (looking for *{extension})"))
        });
    }
    let base = url.object_store();
    let base = base.as_str().trim_end_matches('/');
    let mut files: Vec<(String, u64)> = metas
        .into_iter()
        .map(|m| {
            let location = m.location.as_ref();
            let name = if base == "file:" || base == "file://" {
                format!("/{location}")
            } else {
                format!("{base}/{location}")
            };
            (name, m.size)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The file of `files` (or of `path` when it is one file) that is empty,
/// as an input error: a file of no bytes has no header, no schema and no
/// rows, in every format.
fn empty_file(path: &str, files: &[(String, u64)]) -> Option<Error> {
    let (name, _) = files.iter().find(|(_, size)| *size == 0)?;
    let name = if files.len() == 1 { path } else { name.as_str() };
    Some(Error::Input(format!(
        "input {name}: the file is empty (0 bytes: no header, no schema, no rows)"
    )))
}

/// Reads one file or file set, without the checks of [`read`].
async fn open(
    ctx: &SessionContext,
    format: InputFormat,
    path: &str,
    extension: &str,
    csv: &CsvOptions,
) -> datafusion::error::Result<DataFrame> {
    match format {
        InputFormat::Parquet => {
            let opts = ParquetReadOptions::default().file_extension(extension);
            ctx.read_parquet(path, opts).await
        }
        InputFormat::Csv => ctx.read_csv(path, csv_options(csv).file_extension(extension)).await,
        InputFormat::Json => {
            let opts = NdJsonReadOptions::default().file_extension(extension);
            ctx.read_json(path, opts).await
        }
        InputFormat::Sql => Err(datafusion::error::DataFusionError::Internal(
            "an input table is parquet, csv or json".into(),
        )),
    }
}

/// What a file that cannot be read as `format` is.
fn unreadable(format: InputFormat) -> &'static str {
    match format {
        InputFormat::Parquet => "not a readable Parquet file (truncated, or not Parquet)",
        InputFormat::Csv => "not readable as CSV",
        InputFormat::Json => "not readable as newline-delimited JSON",
        InputFormat::Sql => "not readable",
    }
}

/// At most this many files are opened one by one to find which file of a
/// file set cannot be read.
const FILES_TO_SEARCH: usize = 1000;

/// The input error for `path` (of `files`) that failed to open with `e`:
/// a storage failure stays one; anything else is the input being bad,
/// naming the file (found by opening the files one by one when `path`
/// matches several) and what is wrong with it.
async fn open_failed(
    ctx: &SessionContext,
    format: InputFormat,
    path: &str,
    files: &[(String, u64)],
    csv: &CsvOptions,
    e: datafusion::error::DataFusionError,
) -> Error {
    let err = not_found_hint(path, e);
    let what = match &err {
        Error::Input(m) => match m.strip_prefix(&format!("reading {path}: ")) {
            Some(what) => what.to_string(),
            // Already about the path as a whole (it does not exist).
            None => return err,
        },
        // The engine's own reader failed on the bytes (a Parquet footer
        // that is not there, say): the file is bad.
        Error::Engine { message, .. } => message.clone(),
        // Storage failing stays storage failing.
        _ => return err,
    };
    let mut name = path.to_string();
    if files.len() > 1 {
        for (file, _) in files.iter().take(FILES_TO_SEARCH) {
            if open(ctx, format, file, "", csv).await.is_err() {
                name = file.clone();
                break;
            }
        }
    }
    Error::Input(format!("input {name}: {}: {what}", unreadable(format)))
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
    let files = list_files(ctx, path, extension).await?;
    // A Parquet file of 0 bytes is bad wherever it is (it has no footer);
    // for CSV and JSON, the input is empty when every file is.
    if (files.iter().all(|(_, size)| *size == 0) || format == InputFormat::Parquet)
        && let Some(e) = empty_file(path, &files)
    {
        return Err(e);
    }
    let df = match open(ctx, format, path, extension, csv).await {
        Ok(df) => df,
        Err(e) => return Err(open_failed(ctx, format, path, &files, csv, e).await),
    };
    if df.schema().fields().is_empty() {
        return Err(Error::Input(format!(
            "input {path}: no columns (is the file empty, or without a header?)"
        )));
    }
    Ok(df)
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

/// The column names of `schema`, comma separated, for messages.
pub fn field_list(schema: &arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
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
