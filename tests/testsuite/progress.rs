//! Progress bars: drawn on a terminal, never an escape code on a pipe in `auto`
//! mode, and the summary line in every mode.

use crate::support;

use std::process::Command;

use support::{fixtures, harness_bin, stderr, TestCommand};

fn args(dir: &std::path::Path, progress: &str) -> Vec<String> {
    let f = fixtures();
    vec![
        "--progress".into(),
        progress.into(),
        "--workers".into(),
        "2".into(),
        f.join("mixtape.json").display().to_string(),
        f.join("changes.json").display().to_string(),
        dir.join("out.json").display().to_string(),
    ]
}

const SUMMARY: &str = "24 changes read, 10 applied, 14 rejected";

#[test]
fn piped_stderr_gets_no_escape_codes_but_the_summary() {
    for mode in ["auto", "never"] {
        let dir = tempfile::tempdir().unwrap();
        let o = TestCommand::harness()
            .args(args(dir.path(), mode))
            .output()
            .unwrap();
        assert!(o.status.success());
        let e = stderr(&o);
        assert!(!e.contains('\x1b'), "{mode}: escape code on a pipe: {e:?}");
        assert!(e.contains(SUMMARY), "{mode}: {e}");
    }
}

#[test]
fn always_draws_even_on_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let o = TestCommand::harness()
        .args(args(dir.path(), "always"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let e = stderr(&o);
    assert!(e.contains("\x1b["), "no bars drawn: {e:?}");
    assert!(e.contains("chunk 1"), "{e:?}");
    assert!(e.contains(SUMMARY));
}

/// Runs the harness under a pseudo-terminal with `script`.
#[test]
fn a_terminal_gets_bars_for_every_stage_and_worker() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("this test needs `script` (util-linux) to make a pseudo-terminal");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut line = harness_bin().display().to_string();
    for a in args(dir.path(), "auto") {
        line.push(' ');
        line.push_str(&a);
    }
    let mut script = Command::new("script");
    support::without_testing_aids(&mut script);
    let o = script
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // script copies the terminal's output to its stdout.
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(
        screen.contains("\x1b["),
        "no escape codes on a terminal: {screen:?}"
    );
    for record in [
        "import", "plan", "apply", "chunk 0", "chunk 1", "merge", "export",
    ] {
        assert!(screen.contains(record), "no {record} bar: {screen:?}");
    }
    assert!(
        screen.contains("7 users, 3 playlists, 40 songs in"),
        "{screen:?}"
    );
    assert!(screen.contains(SUMMARY), "{screen:?}");
}
