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

use support::s3_server::{S3Server, SECRET_KEY};
use support::{gen, reference, stderr, TestCommand};

const BUCKET: &str = "runs";

/// A server over a new directory, with the bucket made.
fn server() -> (tempfile::TempDir, S3Server) {
    let root = tempfile::tempdir().unwrap();
    let server = S3Server::start(root.path(), SocketAddr::from(([127, 0, 0, 1], 0)));
    server.bucket(BUCKET);
    (root, server)
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
    assert_eq!(server.unfinished_uploads(), Vec::<String>::new(), "{what}");
    let out_dir = server.root.join(BUCKET).join(prefix).join("out");
    let mut left: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
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
    let (_root, server) = server();
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
