//! What every program does around its work: the flags they all take
//! ([`CommonArgs`]: the log line format, shell completions, the man page),
//! logging to stderr as text or JSON lines, OpenTelemetry tracing when an
//! OTLP endpoint is configured (exported spans, flushed before the exit),
//! a multi-thread runtime, and the error printed as `<program>: <message>`
//! with the exit code of its kind.

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use std::time::Duration;

use clap::{Parser, ValueEnum};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::exit::{self, Failure};

/// The format [`init_logging`] chose, for the lines printed outside the
/// logger.
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The program's name as its parser knows it ([`parse`] records it): the
/// default `service.name` of its exported spans.
static PROGRAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The span export [`init_logging`] started, for [`run_cli`] to flush.
static EXPORT: std::sync::OnceLock<Export> = std::sync::OnceLock::new();

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: `time`, `level`, `target`, `message`, the
    /// event's other fields, and the fields of the spans it happened in
    /// (`run_id`, ...).
    Json,
}

/// The flags every program takes, the same everywhere.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log line format: text, or json (one object a line with time, level,
    /// target, message and the fields of the spans the line was logged in,
    /// such as run_id).
    #[arg(
        long,
        value_enum,
        env = "SF_LOG_FORMAT",
        default_value_t = LogFormat::Text,
        value_name = "FORMAT",
        global = true
    )]
    pub log_format: LogFormat,

    /// Print a completion script for this shell on stdout and exit (given
    /// alone): bash, zsh, fish, elvish, powershell.
    #[arg(long, value_enum, value_name = "SHELL", exclusive = true)]
    pub completions: Option<clap_complete::Shell>,

    /// Write the program's man page (roff) as NAME.1 into this folder and
    /// exit (given alone); scripts/man.sh runs it for every program.
    #[arg(long, value_name = "DIR", exclusive = true, hide = true)]
    pub man_page: Option<PathBuf>,
}

/// Parses the process arguments into `A` (whose [`CommonArgs`] are
/// flattened into it). `--completions SHELL` and `--man-page DIR` are
/// served here, before `A`'s own rules (a required flag, a required
/// subcommand) apply, and the process exits.
pub fn parse<A: Parser>() -> A {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut cmd = A::command();
    let name = cmd.get_name().to_string();
    let _ = PROGRAM.set(name.clone());
    match generator_request(&args) {
        Some(Generate::Completions(shell)) => {
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
            std::process::exit(0);
        }
        Some(Generate::ManPage(dir)) => match write_man_page(cmd, &dir) {
            Ok(path) => {
                println!("{}", path.display());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{name}: writing the man page into {}: {e}", dir.display());
                std::process::exit(i32::from(exit::FAILED));
            }
        },
        None => A::parse(),
    }
}

enum Generate {
    Completions(clap_complete::Shell),
    ManPage(PathBuf),
}

/// `--completions SHELL` or `--man-page DIR` given alone (also in their
/// `--flag=value` forms); anything else is left to clap, whose
/// `exclusive` rule rejects them next to other arguments.
fn generator_request(args: &[OsString]) -> Option<Generate> {
    let rest: Vec<&str> = args.iter().skip(1).map(|a| a.to_str()).collect::<Option<_>>()?;
    let (flag, value) = match rest.as_slice() {
        [flag, value] if !value.starts_with('-') => (*flag, *value),
        [one] => one.split_once('=')?,
        _ => return None,
    };
    match flag {
        "--completions" => <clap_complete::Shell as ValueEnum>::from_str(value, true)
            .ok()
            .map(Generate::Completions),
        "--man-page" => Some(Generate::ManPage(PathBuf::from(value))),
        _ => None,
    }
}

/// Renders `cmd`'s man page into `dir/<name>.1` (the folder is created).
fn write_man_page(cmd: clap::Command, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.1", cmd.get_name()));
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut roff)?;
    std::fs::write(&path, roff)?;
    Ok(path)
}

/// Logs to stderr with `filter`: the `--log` flag or `RUST_LOG` when given,
/// else `default`, in `format`. Ballista logs through the `log` crate;
/// those records arrive here too.
///
/// With an OTLP endpoint in the environment ([`export_endpoint`]) the
/// spans of ShardForge's own crates are exported as well, whatever the log
/// filter: a build's phases, a lookup request's path. [`run_cli`] flushes
/// them before the program exits. A collector that cannot be reached costs
/// a warning, never the program's work.
pub fn init_logging(flag: Option<&str>, default: &str, format: LogFormat) {
    let filter = flag
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let _ = FORMAT.set(format);
    let program = PROGRAM.get().map_or("shardforge", String::as_str);
    let (export, note) = match export_endpoint(|name| std::env::var(name).ok()) {
        Ok(None) => (None, None),
        Ok(Some(endpoint)) => match Export::start(program) {
            Ok(export) => {
                let tracer = export.provider.tracer("shardforge");
                let _ = EXPORT.set(export);
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_filter(exported());
                (Some(layer), Some(format!("exporting spans to {endpoint}")))
            }
            Err(e) => (None, Some(format!("spans are not exported: {e}"))),
        },
        Err(e) => (None, Some(format!("spans are not exported: {e}"))),
    };
    let exporting = export.is_some();
    let _ = match export {
        // The filter is the whole subscriber's: what it leaves out costs
        // nothing, on the serve path as anywhere.
        None => tracing_subscriber::registry()
            .with(filter)
            .with(log_lines(format))
            .try_init(),
        // Each layer has its own: the export does not follow the log filter.
        Some(export) => tracing_subscriber::registry()
            .with(log_lines(format).with_filter(filter))
            .with(export)
            .try_init(),
    };
    match note {
        Some(note) if exporting => tracing::debug!("{note}"),
        Some(note) => tracing::warn!("{note}"),
        None => {}
    }
}

/// The log lines on stderr, in `format`.
fn log_lines<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .boxed(),
    }
}

/// What is exported: the spans of ShardForge's own crates down to `debug`
/// (the lookup path's spans are `debug`, so that with export off and the
/// default log filter the serve path creates none), and the events in
/// them at `info` and above (as span events). Other crates' spans (the
/// query engine's, the HTTP and gRPC stacks', the exporter's own) stay
/// out. Decided once per call site.
fn exported() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    FilterFn::new(|meta: &tracing::Metadata<'_>| {
        let level = if meta.is_span() {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        };
        meta.target().starts_with("sf_") && *meta.level() <= level
    })
    .with_max_level_hint(LevelFilter::DEBUG)
}

/// The OTLP endpoint spans go to: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (the standard OpenTelemetry variables,
/// read through `var`). `None` (no export) when neither is set, or when
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER` names another
/// exporter than `otlp` (`none`). An endpoint the exporter cannot speak to
/// (not plain `http://`: OTLP over gRPC without TLS, to a collector on the
/// node or beside the pod) is an error, which [`init_logging`] logs.
pub fn export_endpoint(var: impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let set = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if set("OTEL_TRACES_EXPORTER").is_some_and(|v| !v.eq_ignore_ascii_case("otlp")) {
        return Ok(None);
    }
    let Some(endpoint) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
    else {
        return Ok(None);
    };
    if !endpoint.starts_with("http://") {
        return Err(format!(
            "the OTLP endpoint {endpoint:?} is not an http:// URL (spans go over gRPC without TLS, to a collector nearby)"
        ));
    }
    Ok(Some(endpoint))
}

/// How long [`run_cli`] waits for the last spans to reach the collector
/// before the program exits: a collector that is down or slow must not
/// hold a nightly build.
const FLUSH_WAIT: Duration = Duration::from_secs(3);

/// The span export: the SDK's batch processor (its own thread) and the
/// OTLP/gRPC exporter, whose connection lives on a small runtime of its
/// own, so that the program's runtime can end before the last spans are
/// sent.
struct Export {
    provider: SdkTracerProvider,
    _runtime: tokio::runtime::Runtime,
}

impl Export {
    /// Starts the export of `program`'s spans (its `service.name` unless
    /// `OTEL_SERVICE_NAME` names another; the endpoint, timeout, headers,
    /// sampler and batching follow the standard `OTEL_*` variables). The
    /// connection is made on the first export.
    fn start(program: &str) -> Result<Export, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sf-otlp")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the exporter's runtime: {e}"))?;
        let exporter = {
            let _in_runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| e.to_string())?
        };
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
            resource = resource.with_service_name(program.to_string());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Export {
            provider,
            _runtime: runtime,
        })
    }
}

/// Sends the spans not yet exported and stops the export, waiting at most
/// [`FLUSH_WAIT`]; a failure is a warning. Nothing when nothing is
/// exported.
fn flush_spans() {
    let Some(export) = EXPORT.get() else {
        return;
    };
    let provider = export.provider.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let flusher = std::thread::Builder::new().name("sf-otlp-flush".into()).spawn(move || {
        let flushed = provider.force_flush();
        let _ = provider.shutdown_with_timeout(FLUSH_WAIT);
        let _ = tx.send(flushed);
    });
    if let Err(e) = flusher {
        tracing::warn!("the last spans were not exported: {e}");
        return;
    }
    match rx.recv_timeout(FLUSH_WAIT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("the last spans were not exported: {e}"),
        Err(_) => tracing::warn!(
            "the last spans were not exported: the collector did not take them within {} s",
            FLUSH_WAIT.as_secs()
        ),
    }
}

/// `--log-format json`: one object a line with the same names in every
/// program: `time` (RFC 3339, UTC, microseconds), `level` (lower case), `target` (the
/// module, or the `log` target of a record from a crate that logs through
/// `log`), `message`, then the fields of the spans the event happened in
/// (outermost first; an inner span's field wins) and the event's own.
#[derive(Debug)]
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let time = sf_manifest::Timestamp::now().to_iso();
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("time".into(), Value::String(time));
        line.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        line.insert("target".into(), Value::String(meta.target().to_string()));
        line.insert("message".into(), Value::String(String::new()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                // The span's fields as JsonFields stored them.
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        let mut visitor = EventFields::default();
        event.record(&mut visitor);
        for (name, value) in visitor.0 {
            match name.as_str() {
                // A `log` record: its real target; the rest of log's
                // bookkeeping (module path, file, line) is left out.
                "log.target" => {
                    line.insert("target".into(), value);
                }
                n if n.starts_with("log.") => {}
                _ => {
                    line.insert(name, value);
                }
            }
        }
        writer.write_str(&ordered(line))
    }
}

/// `line` as one JSON line, the common fields first (`time`, `level`,
/// `target`, `message`), then the others by name.
fn ordered(mut line: Map<String, Value>) -> String {
    let mut text = String::from("{");
    let first = ["time", "level", "target", "message"];
    let firsts = first
        .iter()
        .filter_map(|k| line.remove(*k).map(|v| ((*k).to_string(), v)));
    let firsts: Vec<(String, Value)> = firsts.collect();
    for (i, (key, value)) in firsts.into_iter().chain(line).enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Value::String(key).to_string());
        text.push(':');
        text.push_str(&value.to_string());
    }
    text.push_str("}\n");
    text
}

/// An event's fields as JSON values.
#[derive(Default)]
struct EventFields(Vec<(String, Value)>);

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.push((field.name().into(), Value::from(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name().into(), Value::from(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name().into(), Value::from(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name().into(), Value::from(value)));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().into(), Value::from(value)));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().into(), Value::from(format!("{value:?}"))));
    }
}

/// Runs `work` on a multi-thread runtime. `Ok` holds the success code the
/// work returned; `Err` the exit code of its failure, which was printed to
/// stderr as `<name>: <error and causes>`.
pub fn run_cli<F>(name: &str, work: F) -> Result<u8, u8>
where
    F: Future<Output = Result<u8, Failure>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            print_error(name, &format!("cannot start the runtime: {e}"), None);
            return Err(exit::FAILED);
        }
    };
    let outcome = runtime.block_on(work);
    // Work the program gave up on (a lookup abandoned after sf-serve's
    // grace period, stuck in storage) must not hold the exit: blocking
    // tasks still running after a moment are left to the process's end.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    // On success and on failure alike: the build's spans end with it.
    flush_spans();
    match outcome {
        Ok(code) => Ok(code),
        Err(f) => {
            print_error(name, &f.message(), Some(&f.kind().to_string()));
            tracing::debug!(kind = %f.kind(), "{name} failed");
            Err(f.exit_code())
        }
    }
}

/// Prints a program's final error on stderr: `<name>: <message>`, or with
/// `--log-format json` a line like every other (`level` error, `target` the
/// program, `kind` the error's kind), so that stderr stays one object a
/// line. Printed whatever the log filter: it is the program's answer.
fn print_error(name: &str, message: &str, kind: Option<&str>) {
    if FORMAT.get() != Some(&LogFormat::Json) {
        eprintln!("{name}: {message}");
        return;
    }
    let time = sf_manifest::Timestamp::now().to_iso();
    let mut line = Map::new();
    line.insert("time".into(), Value::String(time));
    line.insert("level".into(), Value::from("error"));
    line.insert("target".into(), Value::from(name));
    line.insert("message".into(), Value::from(message));
    if let Some(kind) = kind {
        line.insert("kind".into(), Value::from(kind));
    }
    eprint!("{}", ordered(line));
}

/// The exit status of [`run_cli`]'s outcome.
pub fn exit_code(outcome: Result<u8, u8>) -> std::process::ExitCode {
    match outcome {
        Ok(code) | Err(code) => std::process::ExitCode::from(code),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            sf_manifest::sync::lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_common_fields_and_the_spans_fields() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let build = tracing::info_span!("build", run_id = "nightly-1");
            let _in_build = build.enter();
            let shard = tracing::info_span!("shard", shard = 3_u64, run_id = "inner");
            let _in_shard = shard.enter();
            tracing::warn!(rows = 10_u64, "slow \"upload\"");
        });
        let text = String::from_utf8(sf_manifest::sync::lock(&out.0).clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: Value = serde_json::from_str(lines[0]).expect("one JSON object");
        assert_eq!(line["level"], "warn");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["message"], "slow \"upload\"");
        assert_eq!(line["rows"], 10);
        assert_eq!(line["shard"], 3);
        // The innermost span's field wins.
        assert_eq!(line["run_id"], "inner");
        assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert!(lines[0].starts_with("{\"time\":"), "the common fields first: {text}");
        assert!(lines[0].contains("\"level\":\"warn\",\"target\":"), "{text}");
    }

    #[test]
    fn spans_are_exported_only_to_a_configured_plain_endpoint() {
        fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
            let owned: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            move |name| owned.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        }
        assert_eq!(export_endpoint(env(&[])), Ok(None));
        assert_eq!(export_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), Ok(None));
        assert_eq!(
            export_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])),
            Ok(Some("http://collector:4317".to_string()))
        );
        // The traces endpoint wins over the general one.
        assert_eq!(
            export_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
            ])),
            Ok(Some("http://b:4317".to_string()))
        );
        // Switched off whatever the endpoint.
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            let pairs = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), off];
            assert_eq!(export_endpoint(env(&pairs)), Ok(None), "{off:?}");
        }
        // No TLS: refused, with the reason.
        let e = export_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://a:4317")])).expect_err("https");
        assert!(e.contains("https://a:4317") && e.contains("http://"), "{e}");
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn completions_and_man_pages_are_asked_for_alone() {
        assert!(matches!(
            generator_request(&os(&["sf-write", "--completions", "bash"])),
            Some(Generate::Completions(clap_complete::Shell::Bash))
        ));
        assert!(matches!(
            generator_request(&os(&["sf-read", "--completions=zsh"])),
            Some(Generate::Completions(clap_complete::Shell::Zsh))
        ));
        assert!(matches!(
            generator_request(&os(&["sf-serve", "--man-page", "out"])),
            Some(Generate::ManPage(p)) if p == Path::new("out")
        ));
        // With anything else, or an unknown shell, clap answers.
        assert!(generator_request(&os(&["sf-write", "--completions", "bash", "--config", "j"])).is_none());
        assert!(generator_request(&os(&["sf-write", "--completions", "tcsh"])).is_none());
        assert!(generator_request(&os(&["sf-write", "--config", "j"])).is_none());
    }
}
