//! `sf-read shell`: read commands typed against one open reader.
//!
//! On a terminal the line editor is rustyline's: editing, history (kept
//! in a file, written after each command) and Tab completion of command
//! names and of a command's flags. When stdin is not a terminal the shell
//! reads commands line by line, without prompt or history, so that a
//! script can pipe them in. A command's error prints one line on stderr
//! and the shell goes on; `quit`, `exit` or the end of the input leave it
//! with exit 0.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Context, Editor, Helper};
use sf_reader::Pin;
use sf_reader::duration::parse_duration;

use crate::exit::Failure;
use crate::output::{Json, Printer, obj, output_error};
use crate::read_ops::{Op, SearchOp, Session};

/// The prompt.
pub const PROMPT: &str = "sf-read> ";

/// One line of the shell.
#[derive(Debug, Parser)]
#[command(
    name = "sf-read shell",
    no_binary_name = true,
    disable_version_flag = true,
    color = clap::ColorChoice::Never,
    override_usage = "COMMAND [ARGS]",
    help_template = "Commands (help COMMAND tells more; Tab completes):\n{subcommands}"
)]
struct Line {
    #[command(subcommand)]
    command: ShellCommand,
}

/// The shell's commands.
#[derive(Debug, Subcommand)]
enum ShellCommand {
    /// Value of one key.
    Get {
        /// The key.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// A routing column's value (repeatable).
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
    },
    /// Values of many keys.
    Multiget {
        /// The keys.
        #[arg(required = true, allow_hyphen_values = true)]
        keys: Vec<String>,
        /// Routing context for every key (repeatable).
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
    },
    /// The vectors nearest a query: `search [0.1,2,-3]`.
    Search {
        /// The query, a JSON array of numbers (quote it if it has spaces).
        #[arg(allow_hyphen_values = true)]
        vector: String,
        /// Results wanted (1 to 10000).
        #[arg(long, default_value_t = 10, value_name = "K")]
        top_k: usize,
        /// Shards to probe in a vector-only snapshot.
        #[arg(long, value_name = "N")]
        num_probes: Option<u32>,
        /// Search only this shard (repeatable).
        #[arg(long = "shard", value_name = "DB_ID")]
        shards: Vec<u32>,
        /// Routing context naming the one shard of a CEL snapshot.
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
        /// Keep only hits whose payload passes this CEL predicate.
        #[arg(long, value_name = "CEL")]
        filter: Option<String>,
    },
    /// The shard a key routes to.
    Route {
        /// The key.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// Routing context (repeatable).
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
    },
    /// The served snapshot.
    Info,
    /// The snapshot's shards.
    Shards,
    /// Whether the snapshot is younger than MAX_AGE.
    Health {
        /// The oldest healthy age, e.g. 26h.
        #[arg(default_value = "24h")]
        max_age: String,
    },
    /// The prefix's manifests, newest first.
    History {
        /// At most this many.
        limit: Option<usize>,
    },
    /// Read _CURRENT again and swap to the snapshot it names.
    Refresh,
    /// Read another snapshot (or another manifest of this one) for the
    /// rest of the session; nothing is written (_CURRENT stays).
    Use {
        /// The other snapshot's _CURRENT (or prefix); default this one.
        current_url: Option<String>,
        /// This manifest (full URL or key under the prefix).
        #[arg(long = "ref", value_name = "REF", conflicts_with = "offset")]
        manifest_ref: Option<String>,
        /// The manifest at this history offset (0 = newest).
        #[arg(long, value_name = "N")]
        offset: Option<usize>,
    },
    /// Leave the shell (also Ctrl-D).
    #[command(visible_alias = "exit")]
    Quit,
}

/// What a line asked for.
enum Action {
    Run(Op),
    Use(Option<String>, Pin),
    Print(String),
    Quit,
    Nothing,
}

/// Splits a line into words as a POSIX shell would: blanks separate,
/// single quotes keep everything, double quotes keep all but `\"` and
/// `\\`, a backslash outside quotes keeps the next character.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("the line ends with a backslash".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// clap's error (or help) text as one line: the message, without the
/// usage and tips that follow it.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let message = text.split("\n\n").next().unwrap_or_default();
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What `line` asks for; `Err` is the one line to print.
fn parse_line(line: &str) -> Result<Action, String> {
    let words = split_words(line)?;
    if words.is_empty() || words[0].starts_with('#') {
        return Ok(Action::Nothing);
    }
    let parsed = match Line::try_parse_from(&words) {
        Ok(p) => p,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    Ok(Action::Print(e.render().to_string()))
                }
                _ => Err(one_line(&e)),
            };
        }
    };
    Ok(match parsed.command {
        ShellCommand::Get { key, ctx } => Action::Run(Op::Get { key, ctx }),
        ShellCommand::Multiget { keys, ctx } => Action::Run(Op::Multiget { keys, ctx }),
        ShellCommand::Route { key, ctx } => Action::Run(Op::Route { key, ctx }),
        ShellCommand::Search {
            vector,
            top_k,
            num_probes,
            shards,
            ctx,
            filter,
        } => Action::Run(Op::Search(SearchOp {
            vector,
            top_k,
            num_probes,
            shards,
            ctx,
            filter,
        })),
        ShellCommand::Info => Action::Run(Op::Info),
        ShellCommand::Shards => Action::Run(Op::Shards),
        ShellCommand::Health { max_age } => Action::Run(Op::Health {
            max_age: parse_duration(&max_age).map_err(|e| format!("error: health: {e}"))?,
        }),
        ShellCommand::History { limit } => Action::Run(Op::History { limit }),
        ShellCommand::Refresh => Action::Run(Op::Refresh),
        ShellCommand::Use {
            current_url,
            manifest_ref,
            offset,
        } => {
            if current_url.is_none() && manifest_ref.is_none() && offset.is_none() {
                return Err("error: use: give a snapshot URL, --ref REF or --offset N".into());
            }
            let pin = match (manifest_ref, offset) {
                (Some(r), _) => Pin::Ref(r),
                (None, Some(n)) => Pin::Offset(n),
                (None, None) => Pin::Current,
            };
            Action::Use(current_url, pin)
        }
        ShellCommand::Quit => Action::Quit,
    })
}

/// Tab completion: command names in the first word, a command's long
/// flags in a word starting with `-`.
struct Completion {
    commands: Vec<String>,
    flags: BTreeMap<String, Vec<String>>,
}

impl Completion {
    fn new() -> Completion {
        let cmd = Line::command();
        let mut commands = vec!["help".to_string()];
        let mut flags = BTreeMap::new();
        for sub in cmd.get_subcommands() {
            let longs: Vec<String> = sub
                .get_arguments()
                .filter_map(|a| a.get_long())
                .map(|l| format!("--{l}"))
                .collect();
            for name in std::iter::once(sub.get_name()).chain(sub.get_visible_aliases()) {
                commands.push(name.to_string());
                flags.insert(name.to_string(), longs.clone());
            }
        }
        commands.sort();
        commands.dedup();
        Completion { commands, flags }
    }

    /// The start of the word at `pos` and its completions.
    fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let first = before[..start].split_whitespace().next();
        let pool: &[String] = match first {
            None => &self.commands,
            Some(command) if word.starts_with('-') => self.flags.get(command).map_or(&[], Vec::as_slice),
            Some(_) => &[],
        };
        (start, pool.iter().filter(|c| c.starts_with(word)).cloned().collect())
    }
}

impl Completer for Completion {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.candidates(line, pos))
    }
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {}

impl Validator for Completion {}

impl Helper for Completion {}

/// The history file when none is named: `sf-read-history` under the
/// user's data folder (`$XDG_DATA_HOME/shardforge`, else
/// `~/.local/share/shardforge`); `None` without either variable.
pub fn default_history_file() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let data = var("XDG_DATA_HOME").or_else(|| var("HOME").map(|h| h.join(".local").join("share")))?;
    Some(data.join("shardforge").join("sf-read-history"))
}

/// Runs the shell on `session` until `quit` or the end of the input:
/// rustyline on a terminal (history in `history` when given), else the
/// lines of `stdin`. Always 0.
pub async fn shell(
    session: &mut Session,
    printer: &Printer,
    history: Option<PathBuf>,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        for line in stdin.lines() {
            let line = line.map_err(|e| Failure::usage("reading commands from stdin", e))?;
            if !command(session, printer, &line, out).await? {
                break;
            }
        }
        return Ok(crate::exit::OK);
    }
    let config = Config::builder()
        .auto_add_history(false)
        .history_ignore_dups(true)
        .map_err(|e| Failure::usage("the line editor", e))?
        .max_history_size(1000)
        .map_err(|e| Failure::usage("the line editor", e))?
        .build();
    let mut editor: Editor<Completion, DefaultHistory> =
        Editor::with_config(config).map_err(|e| Failure::usage("the line editor", e))?;
    editor.set_helper(Some(Completion::new()));
    if let Some(path) = &history {
        prepare_history(path);
        if path.exists()
            && let Err(e) = editor.load_history(path)
        {
            tracing::warn!("history {} is not read: {e}", path.display());
        }
    }
    let info = session.reader().info();
    writeln!(
        out,
        "sf-read shell on {}: run {}, {} shards. `help` lists the commands; Tab completes; Ctrl-D leaves.",
        session.url(),
        info.run_id.as_str(),
        info.num_dbs
    )
    .map_err(output_error)?;
    out.flush().map_err(output_error)?;
    loop {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            // Ctrl-C drops the line being typed, as shells do.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Failure::usage("reading a command", e)),
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
            if let Some(path) = &history
                && let Err(e) = editor.append_history(path)
            {
                tracing::warn!("history {} is not written: {e}", path.display());
            }
        }
        if !command(session, printer, &line, out).await? {
            break;
        }
    }
    Ok(crate::exit::OK)
}

/// The history file's folder, created private to the user when missing.
fn prepare_history(path: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists())
        && let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    {
        tracing::warn!("history folder {} is not created: {e}", dir.display());
    }
}

/// Runs one line; false when it asks to leave. Its error is printed on
/// stderr, one line; only a failure to write the output ends the shell.
async fn command(session: &mut Session, printer: &Printer, line: &str, out: &mut dyn Write) -> Result<bool, Failure> {
    let outcome = match parse_line(line) {
        Err(message) => Err(message),
        Ok(Action::Nothing) => Ok(()),
        Ok(Action::Quit) => return Ok(false),
        Ok(Action::Print(text)) => {
            write!(out, "{text}").map_err(output_error)?;
            Ok(())
        }
        Ok(Action::Run(op)) => {
            // Printed whole or not at all: an error leaves no half line.
            let mut lines = Vec::new();
            match session.run(&op, printer, &mut lines).await {
                Ok(_) => {
                    out.write_all(&lines).map_err(output_error)?;
                    Ok(())
                }
                Err(e) => Err(format!("error: {}: {}", op.name(), e.message())),
            }
        }
        Ok(Action::Use(url, pin)) => match session.switch(url, pin).await {
            Ok(()) => {
                let info = session.reader().info();
                let line = obj(vec![
                    ("op", Json::str("use")),
                    ("current_url", Json::str(session.url())),
                    ("run_id", Json::str(info.run_id.as_str())),
                    ("manifest_ref", Json::str(&info.manifest_ref)),
                ]);
                printer.single(out, &line)?;
                Ok(())
            }
            Err(e) => Err(format!("error: use: {}", e.message())),
        },
    };
    out.flush().map_err(output_error)?;
    if let Err(message) = outcome {
        eprintln!("{}", message.replace('\n', " "));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_as_a_shell_splits_them() {
        let w = |s: &str| split_words(s).expect(s);
        assert_eq!(w("get  a\tb"), vec!["get", "a", "b"]);
        assert_eq!(w(r#"get "a b" 'c d' e\ f"#), vec!["get", "a b", "c d", "e f"]);
        assert_eq!(w(r#"get "" x"#), vec!["get", "", "x"]);
        assert_eq!(w(r#"get "say \"hi\"""#), vec!["get", "say \"hi\""]);
        assert!(split_words("get 'open").is_err());
    }

    #[test]
    fn lines_become_ops() {
        let op = |s: &str| match parse_line(s) {
            Ok(Action::Run(op)) => op,
            _ => panic!("{s}"),
        };
        assert_eq!(
            op("get -5 --ctx region=us"),
            Op::Get {
                key: "-5".into(),
                ctx: vec!["region=us".into()]
            }
        );
        assert_eq!(op("history 3"), Op::History { limit: Some(3) });
        assert!(matches!(parse_line("quit"), Ok(Action::Quit)));
        assert!(matches!(parse_line("exit"), Ok(Action::Quit)));
        assert!(matches!(parse_line("  # a note"), Ok(Action::Nothing)));
        assert!(matches!(parse_line("help"), Ok(Action::Print(t)) if t.contains("multiget")));
        let e = parse_line("gett a").err().expect("unknown command");
        assert!(
            e.starts_with("error:") && e.contains("gett") && !e.contains('\n'),
            "{e}"
        );
        let e = parse_line("get").err().expect("no key");
        assert!(e.contains("<KEY>") && !e.contains('\n'), "{e}");
        assert!(parse_line("use").is_err());
    }

    #[test]
    fn tab_completes_commands_then_flags() {
        let c = Completion::new();
        assert_eq!(c.candidates("mul", 3), (0, vec!["multiget".to_string()]));
        assert_eq!(c.candidates("h", 1).1, vec!["health", "help", "history"]);
        assert_eq!(c.candidates("search [1] --to", 15), (11, vec!["--top-k".to_string()]));
        assert!(c.candidates("get ab", 6).1.is_empty());
    }
}
