//! `--generate` (docs/GUIDE.md "Shell completions and man pages"): for both binaries,
//! the bash script parses (`bash -n`), the zsh and fish ones too where those
//! shells are installed (skipped, saying so, where not), the man page renders
//! with groff without a warning, and every long option `--help` lists is in
//! each of them.

use crate::support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::TestCommand;

fn generated(binary: fn() -> TestCommand, what: &str) -> String {
    let o = binary().args(["--generate", what]).output().unwrap();
    assert!(
        o.status.success(),
        "--generate {what}: {}",
        support::stderr(&o)
    );
    assert!(o.stderr.is_empty(), "--generate {what} wrote to stderr");
    String::from_utf8(o.stdout).unwrap()
}

/// The long options `--help` lists.
fn long_options(binary: fn() -> TestCommand) -> Vec<String> {
    let help = binary().arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    // Option lines: "  -w, --workers <N>  ..." or "      --db <PATH|URL>  ...".
    let mut options: Vec<String> = (help.lines())
        .filter(|line| line.trim_start().starts_with('-'))
        .filter_map(|line| {
            let word = line.split_whitespace().find(|w| w.starts_with("--"))?;
            Some(word.trim_end_matches(',').to_string())
        })
        .collect();
    options.sort();
    options.dedup();
    assert!(options.len() >= 4, "{options:?}");
    options
}

/// Runs `program ARGS` with `text` on stdin; `None` when it is not installed.
fn check_with(program: &str, args: &[&str], text: &str) -> Option<std::process::Output> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: {program} is not installed");
            return None;
        }
        Err(e) => panic!("{program}: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

fn check_binary(binary: fn() -> TestCommand, name: &str) {
    let options = long_options(binary);
    for (what, shell, args) in [
        ("complete-bash", "bash", vec!["-n"]),
        ("complete-zsh", "zsh", vec!["-n"]),
        ("complete-fish", "fish", vec!["--no-execute"]),
    ] {
        let script = generated(binary, what);
        for option in &options {
            let bare = option.trim_start_matches('-');
            assert!(script.contains(bare), "{name} {what} lacks {option}");
        }
        if let Some(o) = check_with(shell, &args, &script) {
            assert!(
                o.status.success(),
                "{name} {what} does not parse: {}",
                support::stderr(&o)
            );
        }
    }
    let page = generated(binary, "man");
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "{name}: not a man page"
    );
    let rendered = check_with("groff", &["-man", "-Tutf8", "-ww"], &page).expect("groff");
    assert!(rendered.status.success(), "{name}: groff failed");
    assert!(
        rendered.stderr.is_empty(),
        "{name}: groff warned: {}",
        support::stderr(&rendered)
    );
    let text = String::from_utf8_lossy(&rendered.stdout).replace('\u{8}', "");
    // groff's bold is "c\bc": what is left reads "----ddbb"; compare the page's source.
    for option in &options {
        let escaped = option.replace('-', "\\-");
        assert!(
            page.contains(&escaped) || page.contains(option.as_str()),
            "{name} man page lacks {option}"
        );
    }
    assert!(
        text.contains(name),
        "{name}: the rendered page does not name it"
    );
}

#[test]
fn the_harness_completions_and_man_page_load_and_cover_every_option() {
    check_binary(TestCommand::harness, "harness");
}

#[test]
fn the_worker_completions_and_man_page_load_and_cover_every_option() {
    check_binary(TestCommand::worker, "worker");
}

#[test]
fn generate_goes_alone() {
    let o = TestCommand::harness()
        .args(["--generate", "man", "m.json", "c.json", "o.json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", support::stderr(&o));
    assert!(o.stdout.is_empty());
}
