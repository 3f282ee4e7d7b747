//! The run report (`--summary-json`, docs/GUIDE.md "Run report"): it parses as JSON,
//! its counts agree with the rejects report and the summary line, its reason
//! names are exactly the guide's, every field the guide documents is there
//! (and no other), it is written after `--strict` fails and after
//! `--stop-after`, `-` puts it alone on stdout, and a failed run leaves an
//! existing report as it was.

use crate::support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::{fixtures, gen, stderr, TestCommand};

fn guide() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/GUIDE.md")).unwrap()
}

/// The reject reasons the guide's table lists, in its order.
fn readme_reasons() -> Vec<String> {
    let readme = guide();
    let section = readme
        .split("## Semantics and rejects")
        .nth(1)
        .expect("the guide has Semantics and rejects");
    let table = section.split("\n## ").next().unwrap();
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split('`').next().unwrap().to_string())
        .collect()
}

fn run(dir: &Path, mixtape: &Path, changes: &Path, extra: &[&str]) -> Output {
    TestCommand::harness()
        .args(["--progress", "never", "-w", "3"])
        .args(extra)
        .arg(mixtape)
        .arg(changes)
        .arg(dir.join("out.json"))
        .output()
        .unwrap()
}

fn read_report(path: &Path) -> (Value, String) {
    let text = fs::read_to_string(path).expect("the report is written");
    (serde_json::from_str(&text).expect("JSON"), text)
}

/// The keys of the report's `stages`, in written order.
fn stages(report: &Value, text: &str) -> Vec<String> {
    let mut names: Vec<String> = report["stages"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort_by_key(|k| text.find(&format!("\"{k}\":")));
    names
}

/// The rejects report's lines counted by reason.
fn rejects_by_reason(dir: &Path) -> BTreeMap<String, u64> {
    let text = fs::read_to_string(dir.join("out.json.rejects.jsonl")).unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let reject: Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(reject["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

/// The figures of the summary line: changes read, applied, rejected.
fn summary_line(o: &Output) -> [u64; 3] {
    let err = stderr(o);
    let line = err
        .lines()
        .find(|l| l.contains("changes read"))
        .unwrap_or_else(|| panic!("no summary line in {err}"));
    let number_before = |word: &str| -> u64 {
        let before = &line[..line.find(word).unwrap()];
        let n = before.trim_end().rsplit(' ').next().unwrap();
        n.parse().unwrap()
    };
    [
        number_before(" changes read"),
        number_before(" applied"),
        number_before(" rejected"),
    ]
}

/// Whether `keys` appear in `text` (a report as written) in this order.
fn in_written_order(text: &str, keys: &[String]) -> bool {
    let at: Vec<usize> = keys
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap_or(usize::MAX))
        .collect();
    at.windows(2).all(|w| w[0] < w[1]) && !at.contains(&usize::MAX)
}

/// Checks the report's counts against the rejects report and the summary line,
/// and its reason names against the guide; `text` is the report as written.
fn assert_counts_agree(dir: &Path, text: &str, o: &Output) {
    let report: Value = serde_json::from_str(text).expect("the report is JSON");
    let counts = &report["counts"];
    let by_reason = counts["rejected_by_reason"].as_object().unwrap();
    let mut names: Vec<&String> = by_reason.keys().collect();
    let mut readme = readme_reasons();
    assert!(
        in_written_order(text, &readme),
        "reasons in the guide's order"
    );
    names.sort();
    readme.sort();
    assert_eq!(
        names,
        readme.iter().collect::<Vec<_>>(),
        "the report's reason names are the guide's"
    );
    let from_rejects = rejects_by_reason(dir);
    for (reason, n) in by_reason {
        let expected = from_rejects.get(reason).copied().unwrap_or(0);
        assert_eq!(n.as_u64(), Some(expected), "{reason}");
    }
    let rejected: u64 = from_rejects.values().sum();
    let [read, applied, rejected_in_line] = summary_line(o);
    assert_eq!(counts["rejected"], rejected);
    assert_eq!(counts["rejected"], rejected_in_line);
    assert_eq!(counts["changes_read"], read);
    assert_eq!(counts["applied"], applied);
    assert_eq!(read, applied + rejected);
}

#[test]
fn the_report_agrees_with_the_rejects_report_and_the_summary() {
    for seed in 0..8 {
        let case = gen::case(seed, 200);
        let dir = tempfile::tempdir().unwrap();
        let (m, c) = (dir.path().join("m.json"), dir.path().join("c.json"));
        fs::write(&m, &case.mixtape).unwrap();
        fs::write(&c, &case.changes).unwrap();
        let report_path = dir.path().join("run.json");
        let o = run(
            dir.path(),
            &m,
            &c,
            &["--summary-json", report_path.to_str().unwrap()],
        );
        assert!(o.status.success(), "seed {seed}: {}", stderr(&o));
        let (report, text) = read_report(&report_path);
        assert_counts_agree(dir.path(), &text, &o);
        assert_eq!(report["exit_code"], 0);
        assert_eq!(report["output_written"], true);
        assert_eq!(report["workers"], 3);
        assert_eq!(report["inputs"]["changes"]["bytes"], case.changes.len());
        assert_eq!(report["inputs"]["mixtape"]["bytes"], case.mixtape.len());
        assert_eq!(report["resumed"], false);
        assert_eq!(
            stages(&report, &text),
            ["import", "plan", "apply", "merge", "export"]
        );
        let largest_worker = report["peak_rss_kb"]["largest_worker"].as_u64().unwrap();
        assert!(largest_worker > 0, "{report}");
    }
}

/// Every field the guide's example shows, with its path (`inputs.mixtape.path`).
fn field_paths(value: &Value, prefix: &str, into: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            into.push(path.clone());
            if key != "rejected_by_reason" && key != "stages" {
                field_paths(inner, &path, into);
            }
        }
    }
}

#[test]
fn every_field_is_documented_and_the_readme_example_is_a_real_report() {
    let readme = guide();
    let section = readme
        .split("## Run report")
        .nth(1)
        .expect("a Run report section");
    let example = section
        .split("```json\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("an example in the Run report section");
    let example: Value = serde_json::from_str(example).expect("the example is JSON");
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &fixtures().join("mixtape.json"),
        &fixtures().join("changes.json"),
        &["--summary-json", "-"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    let report: Value = serde_json::from_str(&text).expect("stdout is the report alone");
    let (mut documented, mut real) = (Vec::new(), Vec::new());
    field_paths(&example, "", &mut documented);
    field_paths(&report, "", &mut real);
    assert_eq!(
        documented, real,
        "the guide's example has the report's fields"
    );
    for field in real {
        let last = field.rsplit('.').next().unwrap();
        assert!(
            section.contains(&format!("`{last}`")),
            "docs/GUIDE.md \"Run report\" does not explain `{last}`"
        );
    }
    assert_counts_agree(dir.path(), &text, &o);
}

#[test]
fn strict_failures_and_stops_write_a_report_and_errors_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("run.json");
    let with_report = ["--summary-json", report_path.to_str().unwrap()];
    let (m, c) = (
        fixtures().join("mixtape.json"),
        fixtures().join("changes.json"),
    );

    let o = run(
        dir.path(),
        &m,
        &c,
        &[&with_report[..], &["--strict"]].concat(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let (report, text) = read_report(&report_path);
    assert_eq!(report["exit_code"], 3);
    assert_eq!(report["output_written"], false);
    assert_counts_agree(dir.path(), &text, &o);

    let o = run(
        dir.path(),
        &m,
        &c,
        &[&with_report[..], &["--fresh", "--stop-after", "plan"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (report, _) = read_report(&report_path);
    assert_eq!(report["stopped_after"], "plan");
    assert_eq!(report["counts"], Value::Null);
    assert_eq!(report["chunks"], 3);
    assert_eq!(report["inputs"]["changes"]["form"], "object");
    assert_eq!(report["outputs"]["work_db_kept"], true);

    // The run continues from the kept database.
    let o = run(dir.path(), &m, &c, &with_report);
    assert!(o.status.success(), "{}", stderr(&o));
    let (report, text) = read_report(&report_path);
    assert_eq!(report["resumed"], true);
    assert_eq!(report["resumed_from"], "apply");
    assert_eq!(stages(&report, &text), ["apply", "merge", "export"]);
    assert_eq!(report["outputs"]["work_db_kept"], false);

    // A failed run leaves the last report as it was.
    let before = fs::read(&report_path).unwrap();
    let broken = dir.path().join("broken.json");
    fs::write(&broken, "{\"changes\": [").unwrap();
    let o = run(dir.path(), &m, &broken, &with_report);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(fs::read(&report_path).unwrap(), before);
}

#[test]
fn an_unwritable_report_path_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &fixtures().join("mixtape.json"),
        &fixtures().join("changes.json"),
        &["--summary-json", dir.path().to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("run report"), "{}", stderr(&o));
    assert!(!dir.path().join("out.json").exists());
    assert!(!dir.path().join("out.json.work.db").exists());
}
