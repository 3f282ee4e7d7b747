//! Inputs and outputs in a bucket (docs/GUIDE.md "Inputs and outputs in a
//! bucket"), against a real S3 server the tests start on 127.0.0.1
//! (support/s3_server.rs: s3s-fs behind a layer with ETags, If-Match and
//! faults on demand): the same bytes as the in-memory reference for every
//! worker count, form and compression, with SQLite and PostgreSQL stores;
//! inputs pinned against replacement; outputs whole or not at all; every
//! wait bounded.

use crate::support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::Ordering;

use support::s3_server::{S3Server, SECRET_KEY};
use support::{gen, reference, stderr, TestCommand};

const BUCKET: &str = "runs";

/// A server over a new directory, with the bucket made; or, when
/// `MIXTAPE_TEST_S3_ENDPOINT` names one, another implementation already
/// running there with the bucket made (CI runs these tests against moto's
/// server too: servers differ in the corners).
fn server() -> (tempfile::TempDir, S3Server) {
    let root = tempfile::tempdir().unwrap();
    if let Some(endpoint) = std::env::var_os("MIXTAPE_TEST_S3_ENDPOINT") {
        return (root, S3Server::external(&endpoint.to_string_lossy()));
    }
    let server = S3Server::start(root.path(), SocketAddr::from(([127, 0, 0, 1], 0)));
    server.bucket(BUCKET);
    (root, server)
}

/// [`server`], when it is the tests' own: the tests of faults that only it
/// can inject, and of its checks of credentials, skip on another.
fn our_server() -> Option<(tempfile::TempDir, S3Server)> {
    let (root, server) = server();
    if server.root.is_none() {
        eprintln!("skipped: needs the tests' own S3 server (faults, credentials)");
        return None;
    }
    Some((root, server))
}

/// The harness in `dir`, with `server`'s credentials and short request bounds.
fn harness(server: &S3Server, dir: &Path, workers: usize, args: &[&str]) -> TestCommand {
    let mut cmd = TestCommand::harness();
    cmd.current_dir(dir)
        .envs(server.env())
        .env("MIXTAPE_S3_TIMEOUT_MS", "3000")
        .args(["--progress", "never", "--workers", &workers.to_string()])
        .args(args);
    cmd
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Encoding {
    Plain,
    Gzip,
    Zstd,
}

fn encode(text: &str, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Plain => text.as_bytes().to_vec(),
        Encoding::Gzip => gzip(text.as_bytes()),
        Encoding::Zstd => zstd::encode_all(text.as_bytes(), 3).unwrap(),
    }
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", stderr(o));
}

/// Runs `case` with both inputs and every output in the bucket under
/// `prefix`, and checks OUTPUT and the rejects report against the reference.
/// `db`: `None` for the default SQLite store.
fn check_in_bucket(
    server: &S3Server,
    case: &gen::Case,
    encoding: Encoding,
    workers: usize,
    db: Option<&str>,
    prefix: &str,
) {
    let what = format!(
        "{prefix}: {} CHANGES, {encoding:?}, -w {workers}",
        case.form()
    );
    let expected = reference::run(&case.mixtape, &case.changes).unwrap();
    let mixtape = server.put(
        BUCKET,
        &format!("{prefix}/in/mixtape.json"),
        &encode(&case.mixtape, encoding),
    );
    let changes = server.put(
        BUCKET,
        &format!("{prefix}/in/changes.json"),
        &encode(&case.changes, encoding),
    );
    let output = format!("s3://{BUCKET}/{prefix}/out/output.json");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = harness(
        server,
        dir.path(),
        workers,
        &["--chunks", &(2 * workers).to_string()],
    );
    if let Some(db) = db {
        cmd.args(["--db", db]);
    }
    let o = cmd
        .arg(&mixtape)
        .arg(&changes)
        .arg(&output)
        .output()
        .unwrap();
    assert_ok(&o, &what);
    let got = server
        .get(BUCKET, &format!("{prefix}/out/output.json"))
        .expect("OUTPUT is there");
    support::assert_same_text(&what, &expected.output, &String::from_utf8(got).unwrap());
    let rejects = server
        .get(BUCKET, &format!("{prefix}/out/output.json.rejects.jsonl"))
        .expect("the rejects report is beside OUTPUT");
    support::assert_same_text(
        &what,
        &expected.rejects,
        &String::from_utf8(rejects).unwrap(),
    );
    // Nothing of the run is left: no upload, no marker, no kept text.
    assert_eq!(server.unfinished_uploads(), (vec![], vec![]), "{what}");
    let left = server.list(BUCKET, &format!("{prefix}/out"));
    assert_eq!(left, ["output.json", "output.json.rejects.jsonl"], "{what}");
    let local: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        local.is_empty(),
        "{what}: the run left {local:?} in its directory"
    );
}

#[test]
fn same_bytes_as_the_reference_for_every_form_encoding_and_worker_count() {
    let (_root, server) = server();
    let cases = gen::cases_in_every_form(0..12, 120);
    for (seed, case) in &cases {
        for (i, encoding) in [Encoding::Plain, Encoding::Gzip, Encoding::Zstd]
            .into_iter()
            .enumerate()
        {
            let workers = 1 + (*seed as usize + i) % 3;
            check_in_bucket(
                &server,
                case,
                encoding,
                workers,
                None,
                &format!("s{seed}-{i}"),
            );
        }
    }
}

#[test]
fn every_worker_count_on_a_larger_case() {
    let (_root, server) = server();
    let case = gen::case_of(77, 3000);
    for workers in [1, 2, 3] {
        check_in_bucket(
            &server,
            &case,
            Encoding::Plain,
            workers,
            None,
            &format!("w{workers}"),
        );
    }
}

#[test]
fn a_postgresql_store_with_inputs_and_outputs_in_a_bucket() {
    let Some(pg) = support::pg::server() else {
        return;
    };
    let (_root, server) = server();
    for (seed, case) in gen::cases_in_every_form(0..12, 150) {
        let db = pg.database(&format!("s3_{seed}"));
        let encoding = [Encoding::Plain, Encoding::Gzip, Encoding::Zstd][seed as usize % 3];
        let workers = 1 + seed as usize % 3;
        check_in_bucket(
            &server,
            &case,
            encoding,
            workers,
            Some(&db.url()),
            &format!("pg{seed}"),
        );
    }
}

#[test]
fn a_wrong_secret_fails_before_any_work_and_is_never_shown() {
    let Some((_root, server)) = our_server() else {
        return;
    };
    let case = gen::case(3, 40);
    let mixtape = server.put(BUCKET, "in/m.json", case.mixtape.as_bytes());
    let changes = server.put(BUCKET, "in/c.json", case.changes.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-secret-Zq81LmX0pp";
    let o = harness(&server, dir.path(), 2, &["--summary-json", "report.json"])
        .env("AWS_SECRET_ACCESS_KEY", wrong)
        .arg(&mixtape)
        .arg(&changes)
        .arg(format!("s3://{BUCKET}/out/o.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let all = format!("{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
    assert!(all.contains("s3://runs/"), "names the object: {all}");
    for secret in [wrong, SECRET_KEY] {
        assert!(!all.contains(secret), "a secret in the output: {all}");
    }
    assert!(server.get(BUCKET, "out/o.json").is_none());
}

/// A case in the bucket under `prefix`: (MIXTAPE's URL, CHANGES's URL,
/// OUTPUT's URL, the reference's outcome).
fn staged(
    server: &S3Server,
    seed: u64,
    changes: u64,
    prefix: &str,
) -> (String, String, String, reference::Outcome) {
    let case = gen::case_of(seed, changes);
    let expected = reference::run(&case.mixtape, &case.changes).unwrap();
    let mixtape = server.put(BUCKET, &format!("{prefix}/m.json"), case.mixtape.as_bytes());
    let changes = server.put(BUCKET, &format!("{prefix}/c.json"), case.changes.as_bytes());
    (
        mixtape,
        changes,
        format!("s3://{BUCKET}/{prefix}/o.json"),
        expected,
    )
}

fn output_of(server: &S3Server, prefix: &str) -> Option<String> {
    server
        .get(BUCKET, &format!("{prefix}/o.json"))
        .map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn a_missing_key_or_bucket_is_a_clear_error() {
    let (_root, server) = server();
    let (mixtape, changes, output, _) = staged(&server, 4, 50, "k");
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("s3://{BUCKET}/k/absent.json");
    let o = harness(&server, dir.path(), 2, &[])
        .arg(&missing)
        .arg(&changes)
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&missing), "{}", stderr(&o));
    let elsewhere = "s3://no-such-bucket/o.json";
    let o = harness(&server, dir.path(), 2, &[])
        .arg(&mixtape)
        .arg(&changes)
        .arg(elsewhere)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(elsewhere), "{}", stderr(&o));
    assert!(
        !dir.path().join("o.json.work.db").exists(),
        "no work was begun"
    );
}

#[test]
fn a_server_that_refuses_connections_fails_in_bounded_time() {
    let (_root, server) = server();
    let (mixtape, changes, output, _) = staged(&server, 5, 50, "r");
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let o = harness(&server, dir.path(), 2, &[])
        .env("AWS_ENDPOINT_URL", format!("http://{closed}"))
        .env("MIXTAPE_S3_TIMEOUT_MS", "500")
        .arg(&mixtape)
        .arg(&changes)
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("s3://runs/r/"), "{}", stderr(&o));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn an_object_is_never_rewritten_in_place() {
    let (_root, server) = server();
    let (mixtape, changes, _, _) = staged(&server, 6, 30, "p");
    let dir = tempfile::tempdir().unwrap();
    let o = harness(&server, dir.path(), 1, &[])
        .arg(&mixtape)
        .arg(&changes)
        .arg(&mixtape)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("same file"), "{}", stderr(&o));
}

/// Plans the case under `prefix` and stops, so that the test can act
/// before the workers read; returns the run's directory.
fn planned(server: &S3Server, urls: (&str, &str, &str), workers: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(server, dir.path(), workers, &["--stop-after", "plan"])
        .arg(urls.0)
        .arg(urls.1)
        .arg(urls.2)
        .output()
        .unwrap();
    assert!(o.status.code().is_some_and(|c| c != 1), "{}", stderr(&o));
    dir
}

fn resume(server: &S3Server, dir: &Path, urls: (&str, &str, &str), workers: usize) -> Output {
    harness(server, dir, workers, &[])
        .arg(urls.0)
        .arg(urls.1)
        .arg(urls.2)
        .output()
        .unwrap()
}

#[test]
fn a_5xx_or_a_reset_during_a_workers_read_is_retried_and_the_run_is_exact() {
    let Some((_root, server)) = our_server() else {
        return;
    };
    let (mixtape, changes, output, expected) = staged(&server, 8, 4000, "x");
    let urls = (mixtape.as_str(), changes.as_str(), output.as_str());
    let dir = planned(&server, urls, 2);
    server.faults.on_keys_containing("x/c.json");
    server.faults.after_bytes.store(3000, Ordering::SeqCst);
    server.faults.fail.store(2, Ordering::SeqCst);
    server.faults.cut.store(2, Ordering::SeqCst);
    let before = server.faults.gets.load(Ordering::SeqCst);
    let o = resume(&server, dir.path(), urls, 2);
    assert_ok(&o, "with faults");
    assert_eq!(
        server.faults.fail.load(Ordering::SeqCst),
        0,
        "every 5xx was met"
    );
    assert_eq!(
        server.faults.cut.load(Ordering::SeqCst),
        0,
        "every reset was met"
    );
    assert!(
        server.faults.gets.load(Ordering::SeqCst) > before + 2,
        "reads were asked again"
    );
    support::assert_same_text(
        "output",
        &expected.output,
        &output_of(&server, "x").unwrap(),
    );
}

#[test]
fn a_server_that_stops_answering_mid_range_fails_in_bounded_time_and_resumes_exact() {
    let Some((_root, server)) = our_server() else {
        return;
    };
    let (mixtape, changes, output, expected) = staged(&server, 9, 4000, "st");
    let urls = (mixtape.as_str(), changes.as_str(), output.as_str());
    let dir = planned(&server, urls, 2);
    server.faults.on_keys_containing("st/c.json");
    server.faults.after_bytes.store(5000, Ordering::SeqCst);
    server.faults.stall.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let o = harness(&server, dir.path(), 2, &[])
        .env("MIXTAPE_S3_TIMEOUT_MS", "400")
        .arg(urls.0)
        .arg(urls.1)
        .arg(urls.2)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let said = stderr(&o);
    assert!(
        said.contains("s3://runs/st/c.json") && said.contains("within 0.4 s"),
        "{said}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(output_of(&server, "st").is_none());
    server.faults.stall.store(false, Ordering::SeqCst);
    let o = resume(&server, dir.path(), urls, 2);
    assert_ok(&o, "the resume");
    support::assert_same_text(
        "output",
        &expected.output,
        &output_of(&server, "st").unwrap(),
    );
}

#[test]
fn changes_replaced_between_plan_and_apply_are_refused() {
    let (_root, server) = server();
    let (mixtape, changes, output, _) = staged(&server, 10, 500, "rp");
    let urls = (mixtape.as_str(), changes.as_str(), output.as_str());
    let dir = planned(&server, urls, 2);
    // The same bytes with one more blank line: another version.
    let mut replaced = server.get(BUCKET, "rp/c.json").unwrap();
    replaced.push(b'\n');
    std::thread::sleep(std::time::Duration::from_millis(20));
    server.put(BUCKET, "rp/c.json", &replaced);
    // A worker run by hand reads under the plan's pin, and is refused.
    let db = dir.path().join("o.json.work.db");
    let o = TestCommand::worker()
        .current_dir(dir.path())
        .envs(server.env())
        .arg("--db")
        .arg(&db)
        .args(["--chunk", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was replaced since the run began"),
        "{}",
        stderr(&o)
    );
    // So is the resume.
    let o = resume(&server, dir.path(), urls, 2);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("was replaced"), "{}", stderr(&o));
    assert!(output_of(&server, "rp").is_none());
}

#[test]
fn a_harness_killed_during_the_output_upload_leaves_the_old_object_and_no_upload() {
    let Some((_root, server)) = our_server() else {
        return;
    };
    let (mixtape, changes, output, expected) = staged(&server, 11, 2000, "kill");
    server.put(BUCKET, "kill/o.json", b"the previous OUTPUT\n");
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let rejects = rejects.to_str().unwrap();
    let o = harness(&server, dir.path(), 2, &["--rejects", rejects])
        .env("MIXTAPE_FAULT", "object-upload-complete@1")
        .arg(&mixtape)
        .arg(&changes)
        .arg(&output)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stderr(&o));
    assert_eq!(
        output_of(&server, "kill").as_deref(),
        Some("the previous OUTPUT\n")
    );
    assert_eq!(
        server.unfinished_uploads().0.len(),
        1,
        "the killed run's upload is left"
    );
    let o = harness(&server, dir.path(), 2, &["--rejects", rejects])
        .arg(&mixtape)
        .arg(&changes)
        .arg(&output)
        .output()
        .unwrap();
    assert_ok(&o, "the rerun");
    support::assert_same_text(
        "output",
        &expected.output,
        &output_of(&server, "kill").unwrap(),
    );
    assert_eq!(
        server.unfinished_uploads(),
        (vec![], vec![]),
        "the rerun aborted it"
    );
    assert!(
        server.get(BUCKET, "kill/.o.json.upload").is_none(),
        "no marker is left"
    );
}

#[test]
fn the_secret_is_in_no_file_the_run_keeps() {
    let (_root, server) = server();
    let (mixtape, changes, output, _) = staged(&server, 12, 300, "sec");
    let dir = tempfile::tempdir().unwrap();
    let o = harness(
        &server,
        dir.path(),
        2,
        &[
            "--keep-db",
            "--summary-json",
            "report.json",
            "--rejects",
            "r.jsonl",
        ],
    )
    .arg(&mixtape)
    .arg(&changes)
    .arg(&output)
    .output()
    .unwrap();
    assert_ok(&o, "the run");
    let mut looked = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        looked += 1;
        assert!(!bytes
            .windows(SECRET_KEY.len())
            .any(|w| w == SECRET_KEY.as_bytes()));
    }
    assert!(
        looked >= 3,
        "the work database, the run report and the rejects were read"
    );
    let said = format!("{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
    assert!(!said.contains(SECRET_KEY), "{said}");
}

#[test]
fn hosts_that_share_only_the_database_url_and_the_bucket() {
    let Some(pg) = crate::hosts::lab() else {
        return;
    };
    let db = pg.database("s3_hosts");
    let hosts = [support::netns::Host::new(1), support::netns::Host::new(2)];
    // One bucket, reached by each host at its own end of its link (and by
    // this host at the first).
    let root = tempfile::tempdir().unwrap();
    let servers: Vec<S3Server> = hosts
        .iter()
        .map(|host| {
            S3Server::start(
                root.path(),
                format!("{}:0", host.server_address).parse().unwrap(),
            )
        })
        .collect();
    servers[0].bucket(BUCKET);
    let case = gen::case_of(41, 3000);
    let expected = reference::run(&case.mixtape, &case.changes).unwrap();
    let mixtape = servers[0].put(
        BUCKET,
        "in/mixtape.json.zst",
        &encode(&case.mixtape, Encoding::Zstd),
    );
    let changes = servers[0].put(
        BUCKET,
        "in/changes.json.gz",
        &encode(&case.changes, Encoding::Gzip),
    );
    let output = format!("s3://{BUCKET}/out/output.json");
    let here = tempfile::tempdir().unwrap();
    let plan = harness(
        &servers[0],
        here.path(),
        1,
        &["--db", &db.url(), "--chunks", "8", "--stop-after", "plan"],
    )
    .arg(&mixtape)
    .arg(&changes)
    .arg(&output)
    .output()
    .unwrap();
    assert!(
        plan.status.code().is_some_and(|c| c != 1),
        "{}",
        stderr(&plan)
    );
    // Each worker starts in an empty directory with another HOME, and has
    // nothing but the two URLs: the database's and the bucket's.
    let homes: Vec<tempfile::TempDir> =
        hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let workers: Vec<std::process::Child> = hosts
        .iter()
        .zip(&servers)
        .zip(&homes)
        .map(|((host, server), home)| {
            let mut cmd = TestCommand::worker_on(Some(host));
            cmd.env_clear()
                .envs(server.env())
                .env("HOME", home.path())
                .env("PGPASSWORD", db.password())
                .env("MIXTAPE_BATCH", "20")
                .current_dir(home.path())
                .args(["--db", &db.url_at(&host.server_address), "--join"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let rest = harness(&servers[0], here.path(), 1, &["--db", &db.url()])
        .env("MIXTAPE_BATCH", "20")
        .arg(&mixtape)
        .arg(&changes)
        .arg(&output)
        .output()
        .unwrap();
    let mut applied = 0;
    for worker in workers {
        // Bounded: the run is over, so each joined worker leaves.
        let o = worker.wait_with_output().unwrap();
        let said = stderr(&o);
        assert!(o.status.success(), "a joined worker: {said}");
        applied += support::chunks_applied(&said);
    }
    assert_ok(&rest, "the rest of the run");
    assert!(applied >= 1, "the joined workers applied no chunk");
    let got = servers[0]
        .get(BUCKET, "out/output.json")
        .expect("OUTPUT is in the bucket");
    support::assert_same_text("hosts", &expected.output, &String::from_utf8(got).unwrap());
    let rejects = servers[0]
        .get(BUCKET, "out/output.json.rejects.jsonl")
        .unwrap();
    support::assert_same_text(
        "hosts",
        &expected.rejects,
        &String::from_utf8(rejects).unwrap(),
    );
    // The kept decompressed texts were objects, and are gone.
    let out_dir = root.path().join(BUCKET).join("out");
    assert_eq!(std::fs::read_dir(out_dir).unwrap().count(), 2);
    for home in &homes {
        let files: Vec<_> = walk(home.path());
        assert!(
            files
                .iter()
                .all(|f| !f.ends_with(".json") && !f.ends_with(".gz")),
            "{files:?}"
        );
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path().to_string_lossy().into_owned());
        }
    }
    files
}

#[test]
fn a_crash_while_mixtape_is_copied_resumes_exact_and_the_copy_goes_with_the_store() {
    let (_root, server) = server();
    let (mixtape, changes, output, expected) = staged(&server, 13, 800, "cp");
    let dir = tempfile::tempdir().unwrap();
    let run = |fault: Option<&str>| {
        let mut cmd = harness(&server, dir.path(), 2, &[]);
        if let Some(fault) = fault {
            cmd.env("MIXTAPE_FAULT", fault);
        }
        cmd.arg(&mixtape)
            .arg(&changes)
            .arg(&output)
            .output()
            .unwrap()
    };
    let o = run(Some("import-element@2"));
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(
        dir.path().join("o.json.work.db.mixtape.partial").exists(),
        "the copy was begun"
    );
    // Killed after the import: the copy is whole and recorded.
    let o = run(Some("plan-change@5"));
    assert!(!o.status.success(), "{}", stderr(&o));
    let copy = std::fs::read(dir.path().join("o.json.work.db.mixtape")).expect("the copy is kept");
    assert_eq!(copy, server.get(BUCKET, "cp/m.json").unwrap());
    let o = run(None);
    assert_ok(&o, "the resume");
    support::assert_same_text(
        "output",
        &expected.output,
        &output_of(&server, "cp").unwrap(),
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_applied_report_and_the_run_report_go_to_the_bucket_too() {
    let (_root, server) = server();
    let (mixtape, changes, output, expected) = staged(&server, 14, 600, "rep");
    let dir = tempfile::tempdir().unwrap();
    let applied = format!("s3://{BUCKET}/rep/applied.jsonl");
    let report = format!("s3://{BUCKET}/rep/report.json");
    let o = harness(
        &server,
        dir.path(),
        2,
        &["--applied", &applied, "--summary-json", &report],
    )
    .arg(&mixtape)
    .arg(&changes)
    .arg(&output)
    .output()
    .unwrap();
    assert_ok(&o, "the run");
    let got = server
        .get(BUCKET, "rep/applied.jsonl")
        .expect("the applied report");
    support::assert_same_text(
        "applied",
        &expected.applied,
        &String::from_utf8(got).unwrap(),
    );
    let report = server
        .get(BUCKET, "rep/report.json")
        .expect("the run report");
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(
        report["counts"]["changes_read"],
        serde_json::json!(expected.changes),
        "{report}"
    );
    // A report beside OUTPUT by the same name is refused, as for files.
    let o = harness(&server, dir.path(), 1, &["--rejects", &output])
        .arg(&mixtape)
        .arg(&changes)
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
