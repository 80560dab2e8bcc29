//! Shell completions (`--completions SHELL`) and man pages (`--man-page
//! DIR`, run for every program by scripts/man.sh), generated from each
//! program's own flag definitions.

use std::path::Path;
use std::process::Command;

use sf_tests::writer_support::binary;

/// Every program, with a flag of its own its completions and man page
/// must name.
const PROGRAMS: &[(&str, &str)] = &[
    ("sf-write", "--metrics-file"),
    ("sf-read", "--current-url"),
    ("sf-sql", "--conf"),
    ("sf-serve", "--max-in-flight"),
    ("sf-scheduler", "--bind-port"),
    ("sf-executor", "--concurrent-tasks"),
];

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary(program))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the program")
}

#[test]
fn bash_completions_name_each_programs_flags() {
    for (program, flag) in PROGRAMS {
        let out = run(program, &["--completions", "bash"]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [*flag, "--log-format", "complete -F"] {
            assert!(
                script.contains(needle),
                "{program}: {needle} not in its bash completions"
            );
        }
        // The other shells too, in the same form.
        for shell in ["zsh", "fish"] {
            let out = run(program, &[&format!("--completions={shell}")]);
            assert!(out.status.success(), "{program} {shell}");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(flag.trim_start_matches('-')),
                "{program}: {flag} not in its {shell} completions"
            );
        }
    }
    // sf-read's subcommands are completed too.
    let out = run("sf-read", &["--completions", "bash"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rollback"));
}

#[test]
fn completions_go_alone_and_know_their_shells() {
    let out = run("sf-write", &["--completions", "bash", "--config", "job.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    let out = run("sf-read", &["--completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

/// The flags a roff page names (roff writes `-` as `\-`).
fn roff_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("\\-", "-")
}

#[test]
fn man_pages_are_written_for_every_program_and_name_its_flags() {
    let out_dir = tempfile::tempdir().expect("tmp");
    let bins = binary("sf-write").parent().expect("binary folder").to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/man.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(out_dir.path())
        .env("SHARDFORGE_BIN_DIR", &bins)
        .output()
        .expect("run scripts/man.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (program, flag) in PROGRAMS {
        let page = roff_text(&out_dir.path().join(format!("{program}.1")));
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{program}: not roff");
        assert!(page.contains(&format!(".TH {program} 1")), "{program}: no title line");
        for needle in [*flag, "--log-format"] {
            assert!(page.contains(needle), "{program}: {needle} not in its man page");
        }
        // The generator is hidden: not a flag users look for.
        assert!(!page.contains("--man-page"), "{program}");
    }
}
