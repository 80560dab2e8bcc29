//! The real `sf-read shell`: driven through a pseudo-terminal (util-linux
//! `script` gives it one) as a person would (the prompt, Tab completion,
//! the history file, an error that does not end it), and through a pipe
//! as a script would.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sf_tests::snapshots::publish_ints;
use sf_tests::writer_support::{binary, output_with_input};

/// The shell's output so far, read by a thread as it comes.
struct Terminal {
    child: std::process::Child,
    input: std::process::ChildStdin,
    chunks: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Terminal {
    /// Waits (at most 60 s) until the output since `from` holds `want`;
    /// returns the offset after it.
    fn wait_for(&mut self, from: usize, want: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(at) = self.seen[from.min(self.seen.len())..].find(want) {
                return from + at + want.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!(
                    "no {want:?} in the shell's output: {:?}",
                    &self.seen[from.min(self.seen.len())..]
                ),
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.input.write_all(text.as_bytes()).expect("write to the terminal");
        self.input.flush().expect("flush");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_on_a_terminal_edits_completes_and_keeps_history() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = format!("file://{}/snap", dir.path().display());
    publish_ints(&prefix, "r1", 2, 10, "v").await;
    let history = dir.path().join("data").join("history");
    let command = format!(
        "{} --current-url {prefix}/_CURRENT --cache-dir {} shell --history {}",
        binary("sf-read").display(),
        dir.path().join("cache").display(),
        history.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("SF_READ_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux script runs the shell on a pseudo-terminal");
    let (tx, chunks) = mpsc::channel();
    let mut stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let input = child.stdin.take().expect("stdin");
    let mut t = Terminal {
        child,
        input,
        chunks,
        seen: String::new(),
    };

    let at = t.wait_for(0, "sf-read> ");
    assert!(t.seen[..at].contains("run r1, 2 shards"), "{}", t.seen);
    // Tab completes the command's name: "inf" becomes "info".
    t.send("inf\t");
    let at = t.wait_for(at, "info");
    t.send("\r");
    let at = t.wait_for(at, "\"op\": \"info\"");
    let at = t.wait_for(at, "sf-read> ");
    // A command that fails prints its error and the shell goes on.
    t.send("get not-a-number\r");
    let at = t.wait_for(at, "error: get:");
    let at = t.wait_for(at, "sf-read> ");
    t.send("get 3\r");
    let at = t.wait_for(at, "\"value\": \"v:3\"");
    let _ = t.wait_for(at, "sf-read> ");
    // Every command is in the history file (written after each).
    let kept = std::fs::read_to_string(&history).expect("history file");
    for line in ["info", "get not-a-number", "get 3"] {
        assert!(kept.lines().any(|l| l == line), "{line:?} in {kept:?}");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&history).expect("history").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the history is the user's alone");
    }
    t.send("quit\r");
    let Terminal { mut child, .. } = t;
    let (tx, exited) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = exited
        .recv_timeout(Duration::from_secs(60))
        .expect("the shell leaves on quit")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_reads_piped_commands_line_by_line() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = format!("file://{}/snap", dir.path().display());
    publish_ints(&prefix, "r1", 2, 10, "v").await;
    let other = format!("file://{}/other", dir.path().display());
    publish_ints(&other, "r2", 2, 10, "w").await;
    let history = dir.path().join("history");
    let current = format!("{prefix}/_CURRENT");
    let mut cmd = Command::new(binary("sf-read"));
    cmd.args(["--current-url", &current, "shell", "--history"])
        .arg(&history)
        .env("SF_CACHE_DIR", dir.path().join("cache"))
        .env_remove("SF_READ_CONFIG");
    let script = format!(
        "# a comment\nget 3\nbogus\nmultiget 1 2\nuse {other}/_CURRENT\nget 3\nuse {}\nget 3\nquit\nget 4\n",
        dir.path().join("missing").display()
    );
    let out = output_with_input(&mut cmd, Some(&script));
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let stderr = String::from_utf8(out.stderr).expect("utf8");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let ops: Vec<&str> = lines.iter().map(|l| l["op"].as_str().expect("op")).collect();
    // No prompt or banner; `bogus` and the failed `use` print one line
    // each on stderr; `use` switches, a failed one keeps the reader; after
    // `quit` nothing runs.
    assert_eq!(ops, ["get", "multiget", "use", "get", "get"], "{stdout}");
    assert_eq!(lines[0]["value"], "v:3");
    assert_eq!(lines[2]["run_id"], "r2");
    assert_eq!(lines[3]["value"], "w:3");
    assert_eq!(lines[4]["value"], "w:3");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(
        errors[0].contains("bogus") && errors[1].starts_with("error: use:"),
        "{stderr}"
    );
    assert!(!history.exists(), "no history from a pipe");
}
