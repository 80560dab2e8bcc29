//! The documentation against the code: a documented example is a tested
//! example (docs/development.md, "Documented examples").
//!
//! - Every ```toml block of the pages, and every job file under
//!   `examples/` and `deploy/`, loads with the loader that reads it for
//!   real; the block's info string says what it is.
//! - Every flag a page shows on a line running a ShardForge program is in
//!   that program's `--help` (that subcommand's for `sf-read`), and every
//!   `cargo` command names a package and target of the workspace.
//! - Every metric name a page lists is one the code registers, and every
//!   registered one is on a page.
//! - Every link between pages lands on a file, and on a heading when it
//!   names an `#anchor`.
//! - Every Rust path a page names (`sf_crate::...`) compiles.
//!
//! The pages are read from the repository: `README.md`, `deploy/README.md`
//! and `docs/*.md`. A failure names the file and line that drifted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sf_tests::writer_support::binary;

/// The repository's root (this crate is its `tests/` folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Files under `dir` (relative to the root) whose names end with `suffix`,
/// relative to the root, sorted.
fn files_under(dir: &str, suffix: &str) -> Vec<String> {
    fn walk(abs: &Path, rel: &str, suffix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(abs) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{rel}/{name}");
            if entry.path().is_dir() {
                walk(&entry.path(), &rel, suffix, out);
            } else if name.ends_with(suffix) {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), dir, suffix, &mut out);
    out.sort();
    out
}

/// The documentation pages.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_string(), "deploy/README.md".to_string()];
    pages.extend(files_under("docs", ".md"));
    pages
}

/// The fence line of a block and its info string (` ```toml partial `).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    line: usize,
    info: String,
}

/// A line of a page: its number, its text, and the block it is in (`None`
/// in prose; fence lines themselves are left out).
struct Line {
    number: usize,
    text: String,
    fence: Option<Fence>,
}

fn lines(page: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Fence)> = None;
    for (i, line) in read(page).lines().enumerate() {
        let trimmed = line.trim_start();
        match &open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let fence = Fence {
                        line: i + 1,
                        info: info.trim().to_string(),
                    };
                    open = Some((line.len() - trimmed.len(), fence));
                    continue;
                }
            }
            Some(_) if trimmed.trim_end() == "```" => {
                open = None;
                continue;
            }
            Some(_) => {}
        }
        let text = match &open {
            // A block indented under a list item: its text without that indent.
            Some((indent, _)) => line.get(*indent..).unwrap_or(trimmed),
            None => line,
        };
        out.push(Line {
            number: i + 1,
            text: text.to_string(),
            fence: open.as_ref().map(|(_, f)| f.clone()),
        });
    }
    out
}

/// One fenced block: its info string, the line of its first content line,
/// and its text.
struct Block {
    info: String,
    line: usize,
    text: String,
}

fn blocks(page: &str) -> Vec<Block> {
    let mut out: Vec<(Fence, Block)> = Vec::new();
    for line in lines(page) {
        let Some(fence) = line.fence else { continue };
        match out.last_mut() {
            Some((f, block)) if *f == fence => {
                block.text.push_str(&line.text);
                block.text.push('\n');
            }
            _ => out.push((
                fence.clone(),
                Block {
                    info: fence.info,
                    line: line.number,
                    text: format!("{}\n", line.text),
                },
            )),
        }
    }
    out.into_iter().map(|(_, block)| block).collect()
}

/// The command lines of a page's blocks, `\` continuations joined, each
/// with the number of its first line.
fn shell_lines(lines: &[Line]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut continues: Option<&Fence> = None;
    for line in lines {
        let Some(fence) = &line.fence else {
            continues = None;
            continue;
        };
        let text = line.text.trim_end();
        let (body, more) = match text.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (text, false),
        };
        match out.last_mut() {
            Some((_, acc)) if continues == Some(fence) => {
                acc.push(' ');
                acc.push_str(body);
            }
            _ => out.push((line.number, body.to_string())),
        }
        continues = more.then_some(fence);
    }
    out
}

/// A line of prose cut into text and code spans (`code`, ``co`de``: a span
/// ends at the next run of as many backticks; an unclosed run is text).
fn segments(text: &str) -> Vec<(bool, &str)> {
    let bytes = text.as_bytes();
    let run_at = |from: usize| bytes[from..].iter().take_while(|b| **b == b'`').count();
    let mut out = Vec::new();
    let (mut plain, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let n = run_at(i);
        let mut j = i + n;
        let close = loop {
            match bytes[j..].iter().position(|b| *b == b'`').map(|k| j + k) {
                None => break None,
                Some(at) if run_at(at) == n => break Some(at),
                Some(at) => j = at + run_at(at),
            }
        };
        match close {
            Some(at) => {
                out.push((false, &text[plain..i]));
                out.push((true, text[i + n..at].trim()));
                i = at + n;
                plain = i;
            }
            None => i += n,
        }
    }
    out.push((false, &text[plain..]));
    out
}

/// The code spans of a line of prose.
fn spans(text: &str) -> Vec<&str> {
    segments(text)
        .into_iter()
        .filter(|(code, _)| *code)
        .map(|(_, s)| s)
        .collect()
}

/// The text of a line of prose outside its code spans.
fn outside_spans(text: &str) -> String {
    segments(text)
        .into_iter()
        .filter(|(code, _)| !*code)
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// TOML

/// How much of the job loader an example goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Read into the job's settings: every key known, every value of its type.
    Settings,
    /// Loaded and validated as `sf-write` loads it (all that needs no input).
    Whole,
}

/// Loads a job file as `sf-write` does, as far as `check` says. The only
/// place this test calls the job loader.
fn load_job(text: &str, origin: &str, check: Check) -> Result<(), String> {
    let read = match check {
        Check::Settings => sf_warehouse::JobFile::read,
        Check::Whole => sf_warehouse::JobFile::parse,
    };
    let job = read(text, origin, Path::new(""), Vec::new()).map_err(|e| sf_manifest::chain(&e))?;
    if check == Check::Whole {
        // The warehouse catalogs of [sf.catalog.NAME], as a table job reads them.
        job.catalogs().map_err(|e| sf_manifest::chain(&e))?;
    }
    Ok(())
}

/// What a job fragment (```toml partial) is merged into.
const MINIMAL_JOB: &str = r#"
key_col = "id"

[input]
format = "csv"
path = "rows.csv"

[routing]
num_dbs = 1

[output]
prefix = "out"
"#;

/// A fragment of a job file merged into [`MINIMAL_JOB`]: each top-level
/// key or section of the fragment replaces the minimal job's.
fn merged_into_minimal_job(fragment: &str) -> Result<String, String> {
    let fragment: toml::Table = fragment.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut job: toml::Table = MINIMAL_JOB.parse().expect("the minimal job is TOML");
    job.extend(fragment);
    toml::to_string(&job).map_err(|e| e.to_string())
}

/// A section header, `[a.b]` or `[a."b.c"]` (a comment may follow), as its path.
fn section_header(line: &str) -> Option<Vec<String>> {
    let inner = line.strip_prefix('[').filter(|l| !l.starts_with('['))?;
    let (inner, rest) = inner.split_once(']')?;
    if !(rest.trim().is_empty() || rest.trim_start().starts_with('#')) {
        return None;
    }
    let key: toml::Table = format!("{inner} = 0").parse().ok()?;
    let mut path = Vec::new();
    let mut value = toml::Value::Table(key);
    while let toml::Value::Table(t) = value {
        let (k, v) = t.into_iter().next()?;
        path.push(k);
        value = v;
    }
    Some(path)
}

/// Whether a comment's text is a setting, `key = ...` or `"a.b" = ...`.
fn is_setting(text: &str) -> bool {
    setting_key(text).is_some()
}

/// The key a `key = value` line sets (its first part when dotted, without
/// quotes), or `None` when the line is no setting.
fn setting_key(text: &str) -> Option<&str> {
    let (key, rest) = if let Some(quoted) = text.strip_prefix('"') {
        let end = quoted.find('"')?;
        (&quoted[..end], &quoted[end + 1..])
    } else {
        let len = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .unwrap_or(0);
        (&text[..len], &text[len..])
    };
    let key = key.split('.').next().unwrap_or(key);
    (!key.is_empty() && rest.trim_start().starts_with('=')).then_some(key)
}

/// Settings a job example shows commented out (`# key = value`): one per
/// setting of a real section; all the settings under a commented-out
/// header (`# [input.tables.users]`, ending at a blank line) together; or
/// an alternative, the settings after a `# or ...` line (ending at a blank
/// line), which stand in for the settings its section writes above it.
struct Commented {
    /// Line within the block (0-based).
    line: usize,
    section: Vec<String>,
    text: String,
    /// Keys of the section the settings replace (an alternative's).
    replaces: Vec<String>,
}

fn commented_settings(text: &str) -> Vec<Commented> {
    let mut out: Vec<Commented> = Vec::new();
    let mut section: Vec<String> = Vec::new();
    // Keys the current section sets, uncommented, so far.
    let mut written: Vec<String> = Vec::new();
    let mut open: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            open = None;
            continue;
        }
        if let Some(path) = section_header(line) {
            section = path;
            written.clear();
            open = None;
            continue;
        }
        let Some(comment) = line.strip_prefix('#').map(str::trim_start) else {
            written.extend(setting_key(line).map(str::to_string));
            continue;
        };
        if let Some(path) = section_header(comment) {
            out.push(Commented {
                line: i,
                section: path,
                text: String::new(),
                replaces: Vec::new(),
            });
            open = Some(out.len() - 1);
        } else if is_setting(comment) {
            match open {
                Some(k) => {
                    out[k].text.push_str(comment);
                    out[k].text.push('\n');
                }
                None => out.push(Commented {
                    line: i,
                    section: section.clone(),
                    text: format!("{comment}\n"),
                    replaces: Vec::new(),
                }),
            }
        } else if comment.starts_with("or ") {
            out.push(Commented {
                line: i + 1,
                section: section.clone(),
                text: String::new(),
                replaces: written.clone(),
            });
            open = Some(out.len() - 1);
        }
    }
    out.retain(|c| !c.text.is_empty());
    out
}

/// Loads a job example (the whole of it, then each setting it shows
/// commented out, put into it in turn), reporting each failure with its
/// place: `job` is what is loaded, `own_text` the example as written,
/// starting at `line` of `file`.
fn check_job(job: &str, origin: &str, own_text: &str, file: &str, line: usize, failures: &mut Vec<String>) {
    if let Err(e) = load_job(job, origin, Check::Whole) {
        failures.push(format!("{file}:{line}: {e}"));
        return;
    }
    let base: toml::Table = job.parse().expect("loaded, so TOML");
    for c in commented_settings(own_text) {
        let setting = c.text.lines().next().unwrap_or_default();
        let setting = setting.split("  #").next().unwrap_or(setting).trim();
        let at = format!("{file}:{}: commented-out `{setting}`", line + c.line);
        let settings: toml::Table = match c.text.parse() {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{at}: not TOML: {}", e.message()));
                continue;
            }
        };
        let mut doc = base.clone();
        match table_at(&mut doc, &c.section) {
            Some(table) => {
                table.retain(|key, _| !c.replaces.iter().any(|r| r == key));
                table.extend(settings)
            }
            None => {
                failures.push(format!("{at}: [{}] is a value, not a section", c.section.join(".")));
                continue;
            }
        }
        let text = toml::to_string(&doc).expect("a table serialises");
        if let Err(e) = load_job(&text, &at, Check::Settings) {
            failures.push(format!("{at}: {e}"));
        }
    }
}

/// The table at `path` in `doc`, made where missing.
fn table_at<'a>(doc: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Table> {
    let Some((first, rest)) = path.split_first() else {
        return Some(doc);
    };
    match doc
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
    {
        toml::Value::Table(t) => table_at(t, rest),
        _ => None,
    }
}

/// A `serve.toml` through `sf-serve --config`'s own loader, its text
/// starting at `line` of the file it was written to (so the loader's line
/// numbers are the page's). The token files it names are pointed at one
/// that exists here (they are read at start).
fn load_serve_config(text: &str, line: usize) -> Result<(), String> {
    use clap::Parser as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "a-token\n").expect("write tokens");
    let text: String = text
        .lines()
        .map(|l| {
            let key = l.trim_start();
            match ["auth_token_file", "admin_token_file"]
                .into_iter()
                .find(|k| key.starts_with(k))
            {
                Some(k) => format!("{k} = {:?}\n", tokens.display().to_string()),
                None => format!("{l}\n"),
            }
        })
        .collect();
    let file = dir.path().join("serve.toml");
    std::fs::write(&file, format!("{}{text}", "\n".repeat(line - 1))).expect("write serve.toml");
    let args = sf_cli::serve::Args::try_parse_from(["sf-serve".into(), "--config".into(), file.into_os_string()])
        .map_err(|e| e.to_string())?;
    sf_cli::serve::config(&args).map(drop).map_err(|e| e.to_string())
}

/// A `reader.toml` through `sf-read --config`'s own loader, its text
/// starting at `line` of the page (so the loader's line numbers are the
/// page's).
fn load_reader_config(text: &str, line: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("reader.toml");
    std::fs::write(&file, format!("{}{text}", "\n".repeat(line - 1))).expect("write reader.toml");
    sf_cli::read_config::load(&file).map(drop).map_err(|e| e.to_string())
}

/// Catalogs as `sf-sql --config FILE` reads them: the `[sf]` table.
fn load_catalogs(text: &str) -> Result<(), String> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let sf = match doc.get("sf") {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => return Err("no [sf] table ([sf.catalog.NAME])".into()),
    };
    let catalogs = sf_warehouse::Catalogs::from_toml(&sf, Vec::new()).map_err(|e| sf_manifest::chain(&e))?;
    if catalogs.iter().next().is_none() {
        return Err("no catalog".into());
    }
    Ok(())
}

/// The kinds of ```toml blocks, by the word after `toml` in the info
/// string (docs/development.md lists them).
const TOML_KINDS: &str = "```toml (a whole job file), ```toml partial (a fragment of one), \
                          ```toml serve.toml (sf-serve's configuration), ```toml catalogs \
                          (sf-sql's --config), ```toml reader.toml (sf-read's --config) \
                          or ```toml Cargo.toml (TOML only)";

/// Checks an example of the kind its info string names; its text starts
/// at `line` of `file`.
fn check_toml(kind: &str, text: &str, file: &str, line: usize, failures: &mut Vec<String>) {
    let result = match kind {
        // Padded so that the loader's line numbers are the file's.
        "" => {
            let padded = format!("{}{text}", "\n".repeat(line - 1));
            return check_job(&padded, file, text, file, line, failures);
        }
        "partial" => match merged_into_minimal_job(text) {
            Ok(job) => {
                let origin = format!("{file}:{line} (merged into a minimal job)");
                return check_job(&job, &origin, text, file, line, failures);
            }
            Err(e) => Err(e),
        },
        "serve.toml" => load_serve_config(text, line),
        "catalogs" => load_catalogs(text),
        "reader.toml" => load_reader_config(text, line),
        "Cargo.toml" => text.parse::<toml::Table>().map(drop).map_err(|e| e.to_string()),
        other => Err(format!("unknown kind {other:?}: write {TOML_KINDS}")),
    };
    if let Err(e) = result {
        failures.push(format!("{file}:{line} (```toml {kind}): {e}"));
    }
}

/// TOML files embedded in deployment manifests (`name.toml: |` block
/// scalars of ConfigMaps): the name, the line of the first content line,
/// the text.
fn embedded_toml(yaml: &str) -> Vec<(String, usize, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(name) = trimmed.strip_suffix(": |").filter(|n| n.ends_with(".toml")) else {
            continue;
        };
        let key_indent = line.len() - trimmed.len();
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
            .copied()
            .collect();
        let indent = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let text: String = body
            .iter()
            .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
            .collect();
        out.push((name.to_string(), i + 2, text));
    }
    out
}

#[test]
fn every_toml_example_loads_with_its_loader() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in pages() {
        for block in blocks(&page) {
            let mut words = block.info.splitn(2, char::is_whitespace);
            if words.next() == Some("toml") {
                let kind = words.next().unwrap_or("").trim();
                checked += 1;
                check_toml(kind, &block.text, &page, block.line, &mut failures);
            }
        }
    }
    let kind_of = |name: &str| if name.ends_with("serve.toml") { "serve.toml" } else { "" };
    for file in files_under("examples", ".toml")
        .into_iter()
        .chain(files_under("deploy", ".toml"))
    {
        checked += 1;
        check_toml(kind_of(&file), &read(&file), &file, 1, &mut failures);
    }
    for file in files_under("deploy", ".yaml") {
        for (name, line, text) in embedded_toml(&read(&file)) {
            checked += 1;
            check_toml(kind_of(&name), &text, &file, line, &mut failures);
        }
    }
    assert!(
        checked >= 10,
        "only {checked} TOML examples found: is the page scan broken?"
    );
    assert!(
        failures.is_empty(),
        "TOML examples their loader refuses:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Flags and commands

const PROGRAMS: &[&str] = &[
    "sf-write",
    "sf-read",
    "sf-sql",
    "sf-serve",
    "sf-scheduler",
    "sf-executor",
];

/// A word of a command line without the quotes, brackets and punctuation
/// around it (`"sf-write`, `[--ctx`, `--config,`).
fn clean(word: &str) -> &str {
    word.trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '[' | ']' | '(' | ')' | ',' | '{' | '}'))
        .trim_end_matches("...")
}

/// The program a word runs (`sf-write`, `target/release/sf-write`).
fn program_of(word: &str) -> Option<&'static str> {
    let name = word.rsplit('/').next().unwrap_or(word);
    PROGRAMS.iter().copied().find(|p| *p == name)
}

/// Where a command line ends: pipes, lists, redirections, comments.
fn ends_command(word: &str) -> bool {
    matches!(word, "|" | "||" | "&&" | ";" | ">" | ">>" | "<" | "2>&1") || word.starts_with('#')
}

/// The flag a word is, if any: `--name` or `-x` (a value after `=` left out).
fn flag_of(word: &str) -> Option<&str> {
    let name = word.split('=').next().unwrap_or(word);
    let body = name.strip_prefix("--").or_else(|| name.strip_prefix('-'))?;
    let short = !name.starts_with("--");
    let ok = body.starts_with(|c: char| c.is_ascii_alphabetic())
        && body.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && (!short || body.len() == 1);
    ok.then_some(name)
}

/// One place that runs a program, with the words that follow it.
#[derive(Debug)]
struct Run {
    place: String,
    program: &'static str,
    words: Vec<String>,
}

/// The runs of ShardForge programs on one command line (or code span).
fn runs_on(place: &str, line: &str, out: &mut Vec<Run>) {
    let words: Vec<&str> = line.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        let Some(program) = program_of(clean(word)) else {
            continue;
        };
        let from = match i.checked_sub(1).map(|j| clean(words[j])) {
            // `cargo ... -p sf-executor`: a package, not a run.
            Some("-p" | "--package") => continue,
            // `cargo run --bin sf-write -- --config ...`: its words follow `--`.
            Some("--bin") => match words[i..].iter().position(|w| *w == "--") {
                Some(k) => i + k + 1,
                None => continue,
            },
            _ => i + 1,
        };
        let rest = words.get(from..).unwrap_or_default();
        out.push(Run {
            place: place.to_string(),
            program,
            words: rest
                .iter()
                .take_while(|w| !ends_command(w))
                .map(|w| clean(w).to_string())
                .collect(),
        });
    }
}

/// The one program a heading names in a code span, if exactly one.
fn heading_program(heading: &str) -> Option<&'static str> {
    let named: BTreeSet<&'static str> = spans(heading).into_iter().filter_map(program_of).collect();
    (named.len() == 1).then(|| named.into_iter().next().expect("one"))
}

/// Every run of a program the pages show: on lines of code blocks, in code
/// spans of prose, and in tables of flags (the first cell's flags, under
/// the nearest heading that names one program); and those of the example
/// jobs' comments and of the deployment files.
fn documented_runs() -> Vec<Run> {
    let mut runs = Vec::new();
    for page in pages() {
        let all = lines(&page);
        for (number, text) in shell_lines(&all) {
            runs_on(&format!("{page}:{number}"), &text, &mut runs);
        }
        let mut headings: Vec<(usize, Option<&'static str>)> = Vec::new();
        for line in all.iter().filter(|l| l.fence.is_none()) {
            let place = format!("{page}:{}", line.number);
            let text = line.text.as_str();
            if text.starts_with('#') {
                let level = text.chars().take_while(|c| *c == '#').count();
                headings.retain(|(l, _)| *l < level);
                headings.push((level, heading_program(text)));
            }
            for span in spans(text) {
                runs_on(&place, span, &mut runs);
            }
            let Some(first_cell) = text.strip_prefix('|').and_then(|t| t.split('|').next()) else {
                continue;
            };
            let flags: Vec<String> = spans(first_cell)
                .iter()
                .filter_map(|s| s.split_whitespace().next().and_then(flag_of))
                .map(str::to_string)
                .collect();
            if let (false, Some(program)) = (flags.is_empty(), headings.iter().rev().find_map(|(_, p)| *p)) {
                runs.push(Run {
                    place,
                    program,
                    words: flags,
                });
            }
        }
    }
    for file in files_under("examples", ".toml") {
        for (i, line) in read(&file).lines().enumerate() {
            runs_on(&format!("{file}:{}", i + 1), line, &mut runs);
        }
    }
    for file in files_under("deploy", ".yaml")
        .into_iter()
        .chain(files_under("deploy", "Dockerfile"))
    {
        yaml_runs(&file, &mut runs);
    }
    runs
}

/// Runs in a deployment file, outside comments: on one line (`exec sf-write
/// --config ...`, `args: ["sf-write", "--config", ...]`), or as a YAML list
/// whose item is the program and whose next items, at the same indent, are
/// its words.
fn yaml_runs(file: &str, out: &mut Vec<Run>) {
    let text = read(file);
    let lines: Vec<&str> = text.lines().collect();
    let item = |line: &str| -> Option<(usize, String)> {
        let trimmed = line.trim_start();
        let word = trimmed.strip_prefix("- ")?;
        Some((line.len() - trimmed.len(), clean(word.trim()).to_string()))
    };
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with('#') {
            continue; // a comment: prose
        }
        let place = format!("{file}:{}", i + 1);
        match item(line) {
            Some((indent, word)) if program_of(&word).is_some() => out.push(Run {
                place,
                program: program_of(&word).expect("a program"),
                words: lines[i + 1..]
                    .iter()
                    .map_while(|l| item(l).filter(|(n, _)| *n == indent).map(|(_, w)| w))
                    .collect(),
            }),
            _ => runs_on(&place, line, out),
        }
    }
}

/// The flags a `--help` lists (with their aliases), and its subcommands.
#[derive(Debug, Default)]
struct Help {
    flags: BTreeSet<String>,
    commands: BTreeSet<String>,
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut in_commands = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if line.trim_end() == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() || indent == 0 {
                in_commands = false;
            } else if indent == 2 {
                help.commands
                    .extend(trimmed.split_whitespace().next().map(str::to_string));
            }
            continue;
        }
        if trimmed.starts_with('-') {
            // `-c, --config <FILE>  description`
            for word in trimmed.split([' ', ',']).filter(|w| !w.is_empty()) {
                match flag_of(word) {
                    Some(flag) => {
                        help.flags.insert(flag.to_string());
                    }
                    None if word.starts_with('<') || word.starts_with('[') => {}
                    None => break,
                }
            }
        }
        // `[alias: --include-old-runs]`, `[aliases: --a, --b]`, `[short aliases: x]`
        if let Some(at) = line.find("[alias").or_else(|| line.find("[short alias")) {
            let inside = line[at..].split(']').next().unwrap_or_default();
            let inside = inside.split(':').nth(1).unwrap_or_default();
            for word in inside.split([' ', ',']).filter_map(flag_of) {
                help.flags.insert(word.to_string());
            }
        }
    }
    help
}

/// `program [subcommand] --help`, parsed; each asked for once.
fn help_of<'a>(cache: &'a mut BTreeMap<(String, String), Help>, program: &str, sub: &str) -> &'a Help {
    cache.entry((program.to_string(), sub.to_string())).or_insert_with(|| {
        let mut cmd = Command::new(binary(program));
        if !sub.is_empty() {
            cmd.arg(sub);
        }
        let out = cmd
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("run {program} --help: {e}"));
        assert!(out.status.success(), "{program} {sub} --help failed: {out:?}");
        parse_help(&String::from_utf8_lossy(&out.stdout))
    })
}

#[test]
fn every_documented_flag_is_in_its_programs_help() {
    let runs = documented_runs();
    assert!(
        runs.len() >= 20,
        "only {} runs found: is the page scan broken?",
        runs.len()
    );
    let mut helps = BTreeMap::new();
    let mut failures = BTreeSet::new();
    let mut flags_checked = 0;
    for run in &runs {
        // sf-read: flags before the subcommand are its own, after it the subcommand's.
        let sub_at = if run.program == "sf-read" {
            let commands = &help_of(&mut helps, "sf-read", "").commands;
            assert!(
                commands.contains("get"),
                "sf-read --help lists no subcommands: {commands:?}"
            );
            run.words.iter().position(|w| commands.contains(w))
        } else {
            None
        };
        for (i, word) in run.words.iter().enumerate() {
            let Some(flag) = flag_of(word) else { continue };
            let sub = match sub_at {
                Some(at) if i > at => run.words[at].as_str(),
                _ => "",
            };
            flags_checked += 1;
            if !help_of(&mut helps, run.program, sub).flags.contains(flag) {
                let command = if sub.is_empty() {
                    run.program.to_string()
                } else {
                    format!("{} {sub}", run.program)
                };
                failures.insert(format!("{}: {flag} is not in `{command} --help`", run.place));
            }
        }
    }
    assert!(
        flags_checked >= 50,
        "only {flags_checked} flags found: is the page scan broken?"
    );
    assert!(
        failures.is_empty(),
        "flags the pages show that the programs do not have:\n{}",
        failures.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The workspace's packages and their targets (`bin`, `bench`, `test`,
/// `example`, `lib`), from `cargo metadata`.
fn workspace_targets() -> BTreeMap<String, BTreeSet<(String, String)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let mut packages = BTreeMap::new();
    for package in meta["packages"].as_array().expect("packages") {
        let mut targets = BTreeSet::new();
        for target in package["targets"].as_array().expect("targets") {
            for kind in target["kind"].as_array().expect("kinds") {
                targets.insert((
                    kind.as_str().unwrap_or_default().to_string(),
                    target["name"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        packages.insert(package["name"].as_str().expect("name").to_string(), targets);
    }
    packages
}

/// Every `cargo run|build|test|bench` line the pages and examples show
/// names a package of the workspace (`-p`) and a target it has (`--bin`,
/// `--bench`, `--test`, `--example`).
#[test]
fn every_documented_cargo_command_names_real_packages_and_targets() {
    let packages = workspace_targets();
    let mut commands: Vec<(String, String)> = Vec::new();
    for page in pages() {
        let all = lines(&page);
        for (number, text) in shell_lines(&all) {
            commands.push((format!("{page}:{number}"), text));
        }
        for line in all.iter().filter(|l| l.fence.is_none()) {
            for span in spans(&line.text) {
                commands.push((format!("{page}:{}", line.number), span.to_string()));
            }
        }
    }
    for file in files_under("examples", ".toml")
        .into_iter()
        .chain(files_under("scripts", ".sh"))
    {
        for (i, line) in read(&file).lines().enumerate() {
            commands.push((format!("{file}:{}", i + 1), line.to_string()));
        }
    }
    let mut checked = 0;
    let mut failures = Vec::new();
    for (place, text) in &commands {
        let words: Vec<&str> = text.split_whitespace().map(clean).collect();
        let Some(at) = words
            .windows(2)
            .position(|w| w[0] == "cargo" && matches!(w[1], "run" | "build" | "test" | "bench" | "check" | "clippy"))
        else {
            continue;
        };
        let words: Vec<&str> = words[at + 2..]
            .iter()
            .copied()
            .take_while(|w| *w != "--" && !ends_command(w))
            .collect();
        let mut package = None;
        let mut targets = Vec::new();
        for pair in words.windows(2) {
            match pair[0] {
                "-p" | "--package" => package = Some(pair[1]),
                "--bin" => targets.push(("bin", pair[1])),
                "--bench" => targets.push(("bench", pair[1])),
                "--test" => targets.push(("test", pair[1])),
                "--example" => targets.push(("example", pair[1])),
                _ => {}
            }
        }
        checked += 1;
        let owners: Vec<&String> = match package {
            Some(p) if !packages.contains_key(p) => {
                failures.push(format!("{place}: no package {p} in the workspace"));
                continue;
            }
            Some(p) => vec![packages.get_key_value(p).expect("present").0],
            None => packages.keys().collect(),
        };
        for (kind, name) in targets {
            let found = owners
                .iter()
                .any(|p| packages[*p].contains(&(kind.to_string(), name.to_string())));
            if !found {
                let whose = package.map_or("any package".to_string(), |p| format!("package {p}"));
                failures.push(format!("{place}: {whose} has no {kind} target {name}"));
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} cargo commands found: is the page scan broken?"
    );
    assert!(
        failures.is_empty(),
        "cargo commands the workspace cannot run:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Metrics

/// A catalog of the metric names the code registers: the prefix its names
/// share, the catalog's path, its names, and the page that documents them.
struct Catalog {
    prefix: &'static str,
    path: &'static str,
    names: &'static [(&'static str, &'static str)],
    page: &'static str,
}

fn metric_catalogs() -> Vec<Catalog> {
    let catalog = |prefix, path, names, page| Catalog {
        prefix,
        path,
        names,
        page,
    };
    vec![
        catalog(
            "sf_reader_",
            "sf_reader::METRICS",
            sf_reader::METRICS,
            "docs/reading.md",
        ),
        catalog(
            "shardforge_build_",
            "sf_cli::report::METRICS",
            sf_cli::report::METRICS,
            "docs/operations.md",
        ),
        catalog("sf_serve_", "sf_server::METRICS", sf_server::METRICS, "docs/serving.md"),
        // One catalog for both programs, under each program's prefix.
        catalog(
            "shardforge_scheduler_",
            "sf_executor::metrics::METRICS",
            sf_executor::metrics::METRICS,
            "docs/operations.md",
        ),
        catalog(
            "shardforge_executor_",
            "sf_executor::metrics::METRICS",
            sf_executor::metrics::METRICS,
            "docs/operations.md",
        ),
    ]
}

/// Metric names on a page (`sf_reader_swaps_total`; a name cut short by
/// `*`, as in `sf_serve_*`, is a pattern, not a name), with their lines.
fn metric_names(page: &str, prefixes: &[&str]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in read(page).lines().enumerate() {
        for prefix in prefixes {
            let mut from = 0;
            while let Some(at) = line[from..].find(prefix).map(|k| from + k) {
                from = at + prefix.len();
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let len = line[at..]
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(line.len() - at);
                let name = &line[at..at + len];
                if line[at + len..].starts_with('*') || name.len() == prefix.len() {
                    continue;
                }
                out.push((i + 1, name.to_string()));
            }
        }
    }
    out
}

#[test]
fn every_documented_metric_is_registered_and_every_registered_one_documented() {
    let catalogs = metric_catalogs();
    let prefixes: Vec<&str> = catalogs.iter().map(|c| c.prefix).collect();
    let mut failures = Vec::new();
    // (page, name) of every registered name a page lists
    let mut documented = BTreeSet::new();
    for page in pages() {
        for (line, name) in metric_names(&page, &prefixes) {
            let catalog = catalogs
                .iter()
                .find(|c| name.starts_with(c.prefix))
                .expect("a prefix matched");
            let registered = |n: &str| catalog.names.iter().any(|(m, _)| *m == n);
            // A histogram's series: name_bucket, name_sum, name_count.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| registered(b)))
                .unwrap_or(&name);
            if registered(base) {
                documented.insert((page.clone(), base.to_string()));
            } else {
                failures.push(format!("{page}:{line}: {name} is not in {}", catalog.path));
            }
        }
    }
    for catalog in &catalogs {
        for (name, _) in catalog.names {
            if !documented.contains(&(catalog.page.to_string(), name.to_string())) {
                failures.push(format!("{name} ({}) is not on {}", catalog.path, catalog.page));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "metric names the pages and the code disagree on:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Links

/// A heading's anchor as GitHub makes it: lower case, links reduced to
/// their text, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading.trim_start_matches('#').trim();
    // `[text](url)` -> `text`
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](").map(|k| open + k) else {
            break;
        };
        let Some(close) = rest[mid..].find(')').map(|k| mid + k) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..mid]);
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings (a repeated heading gets `-1`, `-2`).
fn anchors(page: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in lines(page)
        .iter()
        .filter(|l| l.fence.is_none() && l.text.starts_with('#'))
    {
        let a = anchor(&line.text);
        let n = seen.entry(a.clone()).or_default();
        out.insert(if *n == 0 { a.clone() } else { format!("{a}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn every_link_between_pages_lands() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in pages() {
        let dir = Path::new(&page).parent().unwrap_or(Path::new(""));
        for line in lines(&page).iter().filter(|l| l.fence.is_none()) {
            let prose = outside_spans(&line.text);
            for (at, _) in prose.match_indices("](") {
                let target = &prose[at + 2..];
                let target = &target[..target.find(')').unwrap_or(target.len())];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let place = format!("{page}:{}", line.number);
                let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
                let rel = if file.is_empty() {
                    PathBuf::from(&page)
                } else {
                    normalise(&dir.join(file))
                };
                if !root().join(&rel).exists() {
                    failures.push(format!("{place}: {target}: there is no {}", rel.display()));
                    continue;
                }
                let is_page = rel.extension().is_some_and(|e| e == "md");
                if !fragment.is_empty() && is_page && !anchors(&rel.to_string_lossy()).contains(fragment) {
                    failures.push(format!(
                        "{place}: {target}: {} has no heading #{fragment}",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} links found: is the page scan broken?");
    assert!(failures.is_empty(), "links that land nowhere:\n{}", failures.join("\n"));
}

/// The README's map of the documentation (its "Documentation" table) has
/// a row for every page.
#[test]
fn the_readme_maps_every_page() {
    let mut in_map = false;
    let mut mapped = BTreeSet::new();
    for line in lines("README.md").iter().filter(|l| l.fence.is_none()) {
        if line.text.starts_with("## ") {
            in_map = line.text.trim() == "## Documentation";
        } else if in_map && let Some(cell) = line.text.strip_prefix("| [") {
            let target = cell.split_once("](").and_then(|(_, rest)| rest.split_once(')'));
            mapped.extend(target.map(|(target, _)| target.to_string()));
        }
    }
    assert!(!mapped.is_empty(), "README.md has no \"## Documentation\" table");
    let missing: Vec<String> = pages()
        .into_iter()
        .filter(|p| p != "README.md" && !mapped.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "pages without a row in README.md's Documentation table: {missing:?}"
    );
}

/// `docs/../deploy/README.md` -> `deploy/README.md`.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Rust paths

/// The Rust paths the pages name, imported here so that renaming or
/// removing one breaks this build, and listed so that the test below
/// compares them with the pages.
macro_rules! named_paths {
    ($($head:ident $(:: $tail:ident)+),* $(,)?) => {
        #[allow(unused_imports)]
        mod imported {
            $(use $head $(:: $tail)+ as _;)*
        }
        const NAMED_PATHS: &[&str] = &[$(concat!(stringify!($head) $(, "::", stringify!($tail))+)),*];
    };
}

named_paths! {
    sf_manifest::ratelimit::ManualClock,
    sf_reader::ratelimit,
    sf_cli::report::METRICS,
    sf_cli::write,
    sf_executor::ClusterEngine,
    sf_executor::driver,
    sf_executor::driver_for_job,
    sf_executor::register,
    sf_manifest::Cause,
    sf_manifest::Classified,
    sf_manifest::Key,
    sf_manifest::chain,
    sf_manifest::format::manifest::MAX_NUM_DBS,
    sf_manifest::format::untrusted,
    sf_manifest::publish::failpoint,
    sf_manifest::publish::failpoint::sabotaged,
    sf_manifest::publish::gc,
    sf_manifest::publish::manifest_store,
    sf_manifest::storage::body,
    sf_manifest::storage::location::resolve,
    sf_manifest::storage::resend,
    sf_manifest::store_error_kind,
    sf_manifest::sync::lock,
    sf_manifest::sync::read,
    sf_manifest::sync::write,
    sf_reader::ContextValue,
    sf_reader::Error,
    sf_reader::METRICS,
    sf_reader::Reader,
    sf_reader::ReaderSettings,
    sf_reader::RoutingContext,
    sf_reader::SqliteMode,
    sf_server::METRICS,
    sf_server::audit,
    sf_server::grpc::proto::lookup_client::LookupClient,
    sf_tests::fault_store,
    sf_tests::s3_prefix,
    sf_warehouse::Catalogs,
    sf_warehouse::Driver,
    sf_warehouse::JobFile,
    sf_warehouse::SaveMode,
    sf_warehouse::Source,
    sf_warehouse::Warehouse,
    sf_warehouse::sql,
    sf_warehouse::table_job,
    sf_writer::config,
    sf_writer::job::Embedded,
    sf_writer::job::Engine,
}

const CRATES: &[&str] = &[
    "sf_manifest",
    "sf_router",
    "sf_writer",
    "sf_reader",
    "sf_warehouse",
    "sf_executor",
    "sf_server",
    "sf_cli",
    "sf_tests",
];

/// `sf_crate::a::b` paths on a line; `sf_crate::a::{B, C}` gives
/// `sf_crate::a::B` and `sf_crate::a::C`.
fn rust_paths(line: &str) -> Vec<String> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut out = Vec::new();
    for krate in CRATES {
        let needle = format!("{krate}::");
        for (at, _) in line.match_indices(&needle) {
            if line[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let mut path = krate.to_string();
            let mut rest = &line[at + krate.len()..];
            while let Some(after) = rest.strip_prefix("::") {
                if let Some(group) = after.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for name in group
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty() && *n != "self")
                    {
                        out.push(format!("{path}::{name}"));
                    }
                    path.clear();
                    break;
                }
                let n = ident(after);
                if n == 0 {
                    break;
                }
                path.push_str("::");
                path.push_str(&after[..n]);
                rest = &after[n..];
            }
            if path.contains("::") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn every_rust_path_the_pages_name_compiles() {
    let listed: BTreeSet<&str> = NAMED_PATHS.iter().copied().collect();
    let mut named: BTreeMap<String, String> = BTreeMap::new();
    for page in pages() {
        for line in lines(&page) {
            for path in rust_paths(&line.text) {
                named.entry(path).or_insert_with(|| format!("{page}:{}", line.number));
            }
        }
    }
    let mut failures = Vec::new();
    for (path, place) in &named {
        if !listed.contains(path.as_str()) {
            failures.push(format!(
                "{place}: {path} is not in named_paths! (tests/it/docs.rs), which imports it so that a rename breaks the build"
            ));
        }
    }
    for path in listed {
        if !named.contains_key(path) {
            failures.push(format!("{path} is in named_paths! but no page names it"));
        }
    }
    assert!(failures.is_empty(), "Rust paths:\n{}", failures.join("\n"));
}
