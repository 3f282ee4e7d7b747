//! The PostgreSQL work store against a real server (docs/GUIDE.md
//! "Running on several hosts"; skipped, saying so, where there is none: see tests/testsuite/support/pg.rs).
//!
//! - differential: generated cases in every form, every reject reason, 1, 2, 3
//!   and 5 workers: byte-identical to the reference and to the SQLite store;
//! - several hosts: the harness with one worker and `--chunks 6`, and two
//!   `worker --join` started on their own (own directories, caches and
//!   environment; only the URL and CHANGES shared);
//! - a joined worker killed mid-chunk loses its chunk when its lease expires;
//!   a stalled one is fenced off;
//! - kill -9 of the harness and Ctrl-C, then resume;
//! - clear errors: unreachable server, wrong password, another program's
//!   schema, a run made by another version; the password never shown;
//! - TLS (`sslmode=require`) to the throwaway cluster.

use crate::support;

use std::fs;
use std::process::{Output, Stdio};
use std::time::Duration;

use support::pg::{self, assert_ok, case_from, server_location};
use support::{gen, rest_of, stderr, wait_for};

/// Waits (bounded: 30 s) until the store has a committed batch.
fn wait_for_a_batch(location: &mixtape::store::Location) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let batches = mixtape::store::Store::open(location).and_then(|s| s.batches_committed());
        if batches.is_ok_and(|b| b > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no batch was ever committed");
}

#[test]
fn differential_on_the_server_matches_the_reference_and_sqlite() {
    let Some(server) = pg::server() else { return };
    let db = server.database("differential");
    let url = db.url();
    let mut forms_seen = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let generated = gen::case(seed, 150);
        let form = match generated.changes.trim_start().as_bytes().first() {
            Some(b'[') => "array",
            _ if generated.changes.contains("\"changes\"") => "object",
            _ => "lines",
        };
        forms_seen.insert(form);
        let case = case_from(generated);
        for workers in [1, 2, 3, 5] {
            let what = format!("seed {seed}, {workers} workers");
            assert_ok(&case.run(&url, workers, &[]), &what);
            case.assert_exact(&what);
            let on_pg = fs::read(case.out()).unwrap();
            assert_ok(
                &case.run(
                    &case.dir.path().join("w.db").to_string_lossy(),
                    workers,
                    &[],
                ),
                &what,
            );
            assert_eq!(
                fs::read(case.out()).unwrap(),
                on_pg,
                "{what}: SQLite and PostgreSQL differ"
            );
        }
    }
    assert_eq!(forms_seen.len(), 3, "every form of CHANGES: {forms_seen:?}");
    // Every reject reason, on the server.
    let case = case_from(gen::case_of(4242, 2000));
    assert_ok(&case.run(&url, 3, &[]), "4242");
    case.assert_exact("seed 4242");
    let rejects = fs::read_to_string(case.out().with_file_name("out.json.rejects.jsonl")).unwrap();
    for reason in mixtape::changes::reject::Reason::ALL {
        assert!(
            rejects.contains(&format!("\"{}\"", reason.name())),
            "{}",
            reason.name()
        );
    }
    // The run's tables are gone after success.
    let left: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'mixtape'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn workers_on_several_hosts_share_the_run() {
    let Some(server) = pg::server() else { return };
    let db = server.database("hosts");
    let case = case_from(gen::case_of(21, 4000));
    let url = db.url_without_password();
    let plan = case
        .harness(&url, 1, &["--chunks", "6", "--stop-after", "plan"])
        .env("PGPASSWORD", db.password())
        .output()
        .unwrap();
    assert_ok(&plan, "plan");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let slow = [("MIXTAPE_BATCH", "25")];
    let first = case.joined_worker(&db, a.path(), &slow);
    let second = case.joined_worker(&db, b.path(), &slow);
    let o = case
        .harness(&url, 1, &[])
        .env("PGPASSWORD", db.password())
        .env("MIXTAPE_BATCH", "25")
        .output()
        .unwrap();
    assert_ok(&o, "harness");
    let mut applied_elsewhere = 0;
    for (worker, home) in [(first, a.path()), (second, b.path())] {
        let o = worker.wait_with_output().unwrap();
        let said = stderr(&o);
        assert!(o.status.success(), "{said}");
        let chunks = said.lines().filter(|l| l.contains(" changes, ")).count();
        applied_elsewhere += chunks;
        if chunks > 0 {
            // It fetched the id indexes into its own cache.
            let cached = fs::read_dir(home.join("cache/mixtape")).unwrap().count();
            assert!(cached >= 3, "{cached} files cached");
        }
    }
    assert!(
        applied_elsewhere >= 1,
        "the joined workers applied no chunk"
    );
    case.assert_exact("several hosts");
}

#[test]
fn a_joined_worker_on_another_host_merges_partitions() {
    let Some(server) = pg::server() else { return };
    let db = server.database("merge");
    let case = case_from(gen::case_of(24, 3000));
    let stop = ["--chunks", "3", "--stop-after", "apply"];
    assert_ok(&case.run(&db.url(), 2, &stop), "apply");
    let home = tempfile::tempdir().unwrap();
    let o = case
        .joined_worker(&db, home.path(), &[])
        .wait_with_output()
        .unwrap();
    let said = stderr(&o);
    assert!(o.status.success(), "{said}");
    let partitions: String = db
        .client()
        .query_one(
            "SELECT value FROM mixtape.meta WHERE key = 'partitions'",
            &[],
        )
        .unwrap()
        .get(0);
    let merged: i64 = db
        .client()
        .query_one("SELECT count(*) FROM mixtape.merged", &[])
        .unwrap()
        .get(0);
    assert_eq!(merged.to_string(), partitions);
    assert!(
        said.contains(&format!("worker: merged {partitions} partition(s)")),
        "{said}"
    );
    assert_ok(&case.run(&db.url(), 2, &[]), "finish");
    case.assert_exact("merged elsewhere");
}

#[test]
fn a_dead_workers_lease_expires_and_a_stalled_one_is_fenced_off() {
    let Some(server) = pg::server() else { return };
    // Killed: its chunk is finished by the harness's workers after 1 s.
    let db = server.database("killed");
    let case = case_from(gen::case_of(22, 3000));
    let plan = case
        .harness(&db.url(), 1, &["--chunks", "3", "--stop-after", "plan"])
        .env("MIXTAPE_LEASE_SECS", "1")
        .output()
        .unwrap();
    assert_ok(&plan, "plan");
    let home = tempfile::tempdir().unwrap();
    let doomed = case.joined_worker(
        &db,
        home.path(),
        &[
            ("MIXTAPE_WORKER_NAME", "elsewhere:1"),
            ("MIXTAPE_BATCH", "10"),
            ("MIXTAPE_FAULT", "worker-change@35"),
        ],
    );
    let o = doomed.wait_with_output().unwrap();
    assert_eq!(o.status.code(), None, "{}", stderr(&o));
    assert_ok(&case.run(&db.url(), 2, &[]), "after the kill");
    case.assert_exact("killed worker");

    // Stalled past its lease: taken over, and its late commit refused.
    let db = server.database("fenced");
    let case = case_from(gen::case_of(23, 3000));
    let plan = case
        .harness(&db.url(), 1, &["--chunks", "1", "--stop-after", "plan"])
        .env("MIXTAPE_LEASE_SECS", "3")
        .output()
        .unwrap();
    assert_ok(&plan, "plan");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut stalled = case.joined_worker(
        &db,
        a.path(),
        &[
            ("MIXTAPE_WORKER_NAME", "stalled:1"),
            ("MIXTAPE_BATCH", "10"),
            ("MIXTAPE_FAULT", "worker-change@25:pause=5"),
        ],
    );
    let mut stalled_err = stalled.stderr.take().unwrap();
    let stalled_said = wait_for(&mut stalled_err, "pausing");
    support::wait_until_lease_expired(&server_location(&db), 0);
    let mut taker = case.joined_worker(
        &db,
        b.path(),
        &[
            ("MIXTAPE_WORKER_NAME", "taker:1"),
            ("MIXTAPE_BATCH", "10"),
            ("MIXTAPE_FAULT", "worker-change@1:pause=2.5"),
        ],
    );
    let mut taker_err = taker.stderr.take().unwrap();
    let taker_said = wait_for(&mut taker_err, "pausing");
    assert!(stalled.wait().unwrap().success());
    let stalled_said = rest_of(stalled_err, stalled_said);
    assert!(
        stalled_said.contains("was taken over by another worker"),
        "{stalled_said}"
    );
    assert!(taker.wait().unwrap().success());
    let taker_said = rest_of(taker_err, taker_said);
    assert!(!taker_said.contains("taken over"), "{taker_said}");
    assert_ok(&case.run(&db.url(), 1, &[]), "finish");
    case.assert_exact("fenced worker");
}

#[test]
fn crashes_kills_and_ctrl_c_resume_to_identical_output() {
    let Some(server) = pg::server() else { return };
    let db = server.database("crash");
    let case = case_from(gen::case_of(31, 1500));
    for (point, n) in [
        ("import-element", 1),
        ("worker-write", 2),
        ("worker-commit", 3),
        ("merge-partition", 2),
        ("export-row", 2),
    ] {
        let what = format!("{point}@{n}");
        let crashed = case
            .harness(&db.url(), 2, &[])
            .env("MIXTAPE_FAULT", &what)
            .env("MIXTAPE_BATCH", "50")
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{what}: the fault did not fire");
        assert!(
            !case.out().exists() || fs::read_to_string(case.out()).unwrap() == case.expected.output
        );
        assert_ok(&case.run(&db.url(), 2, &[]), &what);
        case.assert_exact(&what);
        fs::remove_file(case.out()).unwrap();
    }
    // kill -9 of the harness in the middle of apply, and Ctrl-C.
    for signal in [
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let mut running = case
            .harness(&db.url(), 2, &[])
            .env("MIXTAPE_BATCH", "5")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // In the middle of apply: once a batch is committed (a state, not a time).
        wait_for_a_batch(&server_location(&db));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(running.id() as i32), signal).unwrap();
        let status = running.wait().unwrap();
        // The signal landed before the run ended.
        if signal == nix::sys::signal::Signal::SIGINT {
            assert_eq!(status.code(), Some(130), "{status:?}");
        } else {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(signal as i32), "{status:?}");
        }
        assert_ok(&case.run(&db.url(), 2, &[]), &format!("{signal}"));
        case.assert_exact(&format!("after {signal}"));
    }
}

#[test]
fn server_errors_are_clear_and_never_show_the_password() {
    let Some(server) = pg::server() else { return };
    let db = server.database("errors");
    let case = case_from(gen::case_of(41, 200));
    let secret = db.password().to_string();
    // Without a password there is nothing to leak, and nothing tested.
    assert!(
        !secret.is_empty(),
        "the test server has no password (PGPASSWORD): the leak checks would test nothing"
    );
    let check = |o: &Output, wanted: &str| {
        let said = stderr(o);
        assert_eq!(o.status.code(), Some(1), "{said}");
        assert!(said.contains(wanted), "wanted {wanted:?} in {said}");
        assert!(!said.contains(&secret), "the password leaked: {said}");
        assert!(!said.contains("panicked"), "{said}");
        assert!(!case.out().exists());
    };
    // Unreachable: nothing listens on port 1.
    let o = case.run(&format!("postgresql://u:{secret}@127.0.0.1:1/db"), 1, &[]);
    check(
        &o,
        "cannot connect to the work store postgresql://u:***@127.0.0.1:1/db",
    );
    // Wrong password.
    let wrong = db
        .url()
        .replace(&format!(":{secret}@"), ":not-the-password@");
    let o = case.run(&wrong, 1, &[]);
    check(&o, "password authentication failed");
    assert!(!stderr(&o).contains("not-the-password"));
    // Another program's schema of our name.
    db.client()
        .batch_execute("CREATE SCHEMA mixtape; CREATE TABLE mixtape.accounts(id int)")
        .unwrap();
    let o = case.run(&db.url(), 1, &[]);
    check(&o, "another program made");
    assert!(!stderr(&o).contains("--fresh to discard"), "{}", stderr(&o));
    check(
        &case.run(&db.url(), 1, &["--fresh"]),
        "another program made",
    );
    db.client()
        .batch_execute("DROP SCHEMA mixtape CASCADE")
        .unwrap();
    // No password in the URL nor in PGPASSWORD: the password file, as libpq
    // reads it, and only when others cannot read it.
    let home = tempfile::tempdir().unwrap();
    let passfile = home.path().join("pgpass");
    fs::write(&passfile, format!("*:*:{}:*:{secret}\n", db.name)).unwrap();
    let from_file = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&passfile, fs::Permissions::from_mode(mode)).unwrap();
        case.harness(&db.url_without_password(), 1, &["--fresh"])
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", &passfile)
            .output()
            .unwrap()
    };
    if !secret.is_empty() {
        let o = from_file(0o644);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("has group or world access"),
            "{}",
            stderr(&o)
        );
        assert_ok(&from_file(0o600), "password from PGPASSFILE");
        case.assert_exact("password from PGPASSFILE");
        fs::remove_file(case.out()).unwrap();
    }
    // A second harness on the same database while one runs: refused.
    let mut holder = db.client();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x6d69_7874_6170_6521_i64])
        .unwrap();
    check(
        &case.run(&db.url(), 1, &[]),
        "another harness run is using the work store",
    );
    drop(holder);
    // A run made by another version.
    assert_ok(&case.run(&db.url(), 1, &["--stop-after", "plan"]), "plan");
    db.client()
        .batch_execute("UPDATE mixtape.meta SET value = '1' WHERE key = 'schema_version'")
        .unwrap();
    check(
        &case.run(&db.url(), 1, &[]),
        "made by another version of mixtape",
    );
    // A worker that fails: the command to reproduce it has no password.
    let o = case
        .harness(&db.url(), 1, &["--fresh"])
        .env("MIXTAPE_FAULT", "worker-change@3")
        .output()
        .unwrap();
    let said = stderr(&o);
    assert!(said.contains("to reproduce by hand"), "{said}");
    assert!(said.contains(&db.url_without_password()), "{said}");
    assert!(secret.is_empty() || !said.contains(&secret), "{said}");
}

#[test]
fn tls_when_the_url_asks_for_it() {
    let Some(server) = pg::server() else { return };
    let db = server.database("tls");
    let mut client = db.client();
    let ssl_on: String = client.query_one("SHOW ssl", &[]).unwrap().get(0);
    if ssl_on != "on" {
        panic!("the test server has ssl off; .ci/run starts it with a certificate");
    }
    let case = case_from(gen::case_of(51, 300));
    let url = format!("{}?sslmode=require", db.url());
    assert_ok(&case.run(&url, 2, &["--keep-db"]), "sslmode=require");
    case.assert_exact("over TLS");
    // verify-full against the CA that signed the server's certificate (.ci/run
    // makes both and starts the server with it).
    match std::env::var("MIXTAPE_TEST_CA") {
        Ok(ca) => {
            let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", db.url());
            assert_ok(&case.run(&url, 2, &["--fresh"]), "sslmode=verify-full");
            case.assert_exact("over verified TLS");
        }
        Err(_) if std::env::var_os("MIXTAPE_REQUIRE_PG").is_some() => {
            panic!("MIXTAPE_REQUIRE_PG is set but MIXTAPE_TEST_CA is not")
        }
        Err(_) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: verify-full (MIXTAPE_TEST_CA unset; .ci/run sets it)"
            );
        }
    }
    // Asking for a certificate the server's does not chain to fails clearly.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("ca.pem");
    fs::write(&bogus, BOGUS_CA).unwrap();
    let url = format!(
        "{}?sslmode=verify-ca&sslrootcert={}",
        db.url(),
        bogus.display()
    );
    let o = case.run(&url, 1, &["--fresh"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    assert!(stderr(&o).contains("UnknownIssuer"), "{}", stderr(&o));
}

/// A self-signed CA certificate no server uses.
const BOGUS_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBljCCATugAwIBAgIUcfJJc9wTKiwxEgJp7XsrOhmQg90wCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVbWl4dGFwZS10ZXN0LWJvZ3VzLWNhMB4XDTI2MTEyNjEzNDUw
NVoXDTM2MTEyMzEzNDUwNVowIDEeMBwGA1UEAwwVbWl4dGFwZS10ZXN0LWJvZ3Vz
LWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAExhvLl8FPliUF5Rsdu+/hI781
E/nuOLBFY64tCQHw54yPRXIoBa8K7iJPZMLxo3xZ4vdzj+waRJTln9vuXQtZ+KNT
MFEwHQYDVR0OBBYEFOuzetsmu28JlckqfFJfbf+MT8FoMB8GA1UdIwQYMBaAFOuz
etsmu28JlckqfFJfbf+MT8FoMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
SQAwRgIhALuqxdgFNgmo8Yzq4098DEK+WNMp6kfjL6XGVV6jciwIAiEAyq9FFyyu
taCf35VoL1FMWumHfBP6QxqpMug/JSibsBE=
-----END CERTIFICATE-----
";
