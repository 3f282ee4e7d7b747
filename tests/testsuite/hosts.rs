//! Hosts that fail like real hosts (docs/GUIDE.md "When a host dies"), against a
//! real server: worker "hosts" in network namespaces of their own
//! (tests/testsuite/support/netns.rs), cut off by setting their link down; the server
//! restarted; sessions ended by the server. Each scenario ends with the same
//! bytes as the reference, and prints its figure (`figure: ...`, seen with
//! `--nocapture`) for docs/GUIDE.md's table.
//!
//! The tests reconfigure and restart the server, so they run one at a time
//! ([`lab`]) and only against `pg_virtualenv`'s throwaway cluster; they are
//! skipped, saying so, without a server or without root (CI requires both:
//! `MIXTAPE_REQUIRE_PG`, `MIXTAPE_REQUIRE_NETNS`). Every wait is bounded.

use crate::support;

use std::fs;
use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::netns::{self, Host};
use support::pg::{self, assert_ok, case_from, Case, TestDb};
use support::{gen, stderr};

/// The lease of these tests: short, so that the scenarios take seconds; the
/// bound on a silent connection is twice it (docs/GUIDE.md "When a host dies").
const LEASE: &str = "5";
const LEASE_SECS: f64 = 5.0;

/// The server, made to accept the test hosts, with this test's turn; `None`
/// (skipped, said) without a server, without root, or when the server is not
/// a throwaway cluster.
pub(crate) fn lab() -> Option<pg::Server> {
    // They restart and reconfigure the server: no other test may use it
    // meanwhile, these included.
    let server = pg::server_alone()?;
    if !netns::available() {
        return None;
    }
    if !server.accept_test_hosts() {
        assert!(
            std::env::var_os("MIXTAPE_REQUIRE_NETNS").is_none(),
            "MIXTAPE_REQUIRE_NETNS is set but the server is not pg_virtualenv's throwaway cluster"
        );
        eprintln!("skipped: the server is not a throwaway cluster (run under pg_virtualenv)");
        return None;
    }
    Some(server)
}

/// A child that is killed if the test ends (or fails) before it does.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// What a child says on stderr, collected as it comes by a thread of its own,
/// so that a test can wait for a line with a deadline.
struct Said(Arc<Mutex<String>>);

impl Said {
    fn of(child: &mut Child) -> Said {
        let text = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr piped");
        let collected = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = err.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let mut text = collected.lock().unwrap();
                text.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Said(text)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded) until the child has said `what`.
    fn wait_for(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "never said {what:?} within {within:?}; said:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits (bounded) for `child` to end; kills it and fails when it does not.
fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `check` holds; how long it took.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// The chunk `owner` holds a lease on, with its token.
fn chunk_leased_by(db: &TestDb, owner: &str) -> Option<(i64, i64)> {
    db.client()
        .query_opt(
            "SELECT chunk, lease_token FROM mixtape.chunks WHERE lease_owner = $1 AND NOT done",
            &[&owner],
        )
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

/// What the store has recorded: blocks, rejects, batches (nothing while
/// there is no store yet).
fn recorded(db: &TestDb) -> (i64, i64, i64) {
    let row = db.client().query_one(
        "SELECT (SELECT count(*) FROM mixtape.blocks), (SELECT count(*) FROM mixtape.rejects),
                (SELECT coalesce(sum(batches), 0)::bigint FROM mixtape.chunks)",
        &[],
    );
    row.map_or((0, 0, 0), |row| (row.get(0), row.get(1), row.get(2)))
}

/// Whether the server has sessions from `host` (by client address).
fn sessions_from(db: &TestDb, host: &Host) -> i64 {
    let far = host.server_address.replace(".1", ".2");
    db.client()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE host(client_addr) = $1",
            &[&far],
        )
        .unwrap()
        .get(0)
}

/// Plans `case` in `db` (on this host), `chunks` chunks.
fn plan(case: &Case, db: &TestDb, chunks: &str) {
    let o = case
        .harness(
            &db.url(),
            1,
            &[
                "--chunks",
                chunks,
                "--stop-after",
                "plan",
                "--lease-secs",
                LEASE,
            ],
        )
        .output()
        .unwrap();
    assert_ok(&o, "plan");
}

fn figure(scenario: &str, what: &str, took: Duration) {
    eprintln!("figure: {scenario}: {what}: {:.1} s", took.as_secs_f64());
}

#[test]
fn a_host_cut_off_mid_chunk_loses_it_and_is_fenced_off_when_it_returns() {
    let Some(server) = lab() else { return };
    let db = server.database("cut");
    let case = case_from(gen::case_of(31, 3000));
    plan(&case, &db, "4");
    let host = Host::new(1);
    let home = tempfile::tempdir().unwrap();
    let release = home.path().join("release");
    let release_arg = release.to_string_lossy().into_owned();
    let mut cut_off = Running(case.joined_worker_on(
        Some(&host),
        &db,
        &db.url_at(&host.server_address),
        home.path(),
        &[
            ("MIXTAPE_BATCH", "20"),
            ("MIXTAPE_FAULT", "worker-change@30:hold=120"),
            ("MIXTAPE_FAULT_RELEASE", &release_arg),
            ("MIXTAPE_WORKER_NAME", "host-a:1"),
        ],
    ));
    let said = Said::of(&mut cut_off);
    said.wait_for("fault injection: holding", Duration::from_secs(30));
    let (chunk, token) = chunk_leased_by(&db, "host-a:1").expect("host a holds a chunk");
    host.cut();
    let cut_at = Instant::now();
    // The rest of the run, here: its workers take the chunk over once the
    // lease expires.
    let mut rest = Running(
        case.harness(&db.url(), 2, &["--keep-db", "--lease-secs", LEASE])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rest_said = Said::of(&mut rest);
    let status = wait_exit(&mut rest, Duration::from_secs(60), "the rest of the run");
    assert!(
        status.success(),
        "the rest of the run: {}",
        rest_said.text()
    );
    let finished = cut_at.elapsed();
    let new_token: i64 = db
        .client()
        .query_one(
            "SELECT lease_token FROM mixtape.chunks WHERE chunk = $1",
            &[&chunk],
        )
        .unwrap()
        .get(0);
    assert!(new_token > token, "chunk {chunk} was never taken over");
    case.assert_exact("a host cut off mid-chunk");
    let before = recorded(&db);
    // The link comes back, and the cut-off worker goes on from where it was.
    host.mend();
    fs::write(&release, "").unwrap();
    let status = wait_exit(&mut cut_off, Duration::from_secs(60), "the cut-off worker");
    let text = said.text();
    assert!(
        text.contains("was taken over by another worker"),
        "the cut-off worker did not say it was fenced off:\n{text}"
    );
    assert!(status.success(), "the cut-off worker: {text}");
    assert_eq!(
        recorded(&db),
        before,
        "the fenced-off worker recorded something"
    );
    assert!(
        finished.as_secs_f64() < LEASE_SECS + 15.0,
        "the run took {finished:?} after the cut (lease {LEASE} s)"
    );
    figure(
        "host cut off mid-chunk",
        "cut to the run finished",
        finished,
    );
}

#[test]
fn the_server_restarting_during_apply_and_merge_stops_the_run_and_the_same_command_resumes() {
    let Some(server) = lab() else { return };
    for (stage, fault) in [
        ("apply", "worker-change@200:hold=120"),
        ("merge", "merge-partition@2:hold=120"),
    ] {
        let db = server.database("restart");
        let case = case_from(gen::case_of(32, 3000));
        let release = case.dir.path().join(format!("release-{stage}"));
        let release_arg = release.to_string_lossy().into_owned();
        let mut run = Running(
            case.harness(&db.url(), 2, &["--chunks", "4", "--lease-secs", LEASE])
                .env("MIXTAPE_BATCH", "20")
                .env("MIXTAPE_FAULT", fault)
                .env("MIXTAPE_FAULT_RELEASE", &release_arg)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let said = Said::of(&mut run);
        // Held in the stage (a worker's change, or a partition's
        // transaction): the restart comes in the middle of it.
        if stage == "merge" {
            said.wait_for("fault injection: holding", Duration::from_secs(30));
        } else {
            wait_until(Duration::from_secs(30), "a batch", || recorded(&db).2 > 2);
        }
        let restarted_at = Instant::now();
        server.restart();
        fs::write(&release, "").unwrap();
        let status = wait_exit(
            &mut run,
            Duration::from_secs(60),
            "the harness after a restart",
        );
        let stopped = restarted_at.elapsed();
        let text = said.text();
        assert!(
            !status.success(),
            "the run went on through a restart:\n{text}"
        );
        assert!(
            text.contains("lost the connection to the work store"),
            "no clear error after a restart during {stage}:\n{text}"
        );
        let again = Instant::now();
        let o = case.run(&db.url(), 2, &["--chunks", "4", "--lease-secs", LEASE]);
        assert_ok(&o, "the same command again");
        assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
        case.assert_exact(&format!("the server restarted during {stage}"));
        figure(
            &format!("server restarted during {stage}"),
            "restart to the harness stopped",
            stopped,
        );
        figure(
            &format!("server restarted during {stage}"),
            "the same command, resumed to the end",
            again.elapsed(),
        );
    }
}

#[test]
fn the_harness_host_cut_off_stops_within_the_bound_and_resumes_once_back() {
    let Some(server) = lab() else { return };
    let db = server.database("harnesscut");
    let case = case_from(gen::case_of(33, 3000));
    let host = Host::new(2);
    let url = db.url_at(&host.server_address);
    let release = case.dir.path().join("release");
    let release_arg = release.to_string_lossy().into_owned();
    let harness_on_host = |extra_env: &[(&str, &str)]| {
        let mut cmd = case.harness_on(
            Some(&host),
            &url,
            2,
            &["--chunks", "4", "--lease-secs", LEASE],
        );
        cmd.env("PGPASSWORD", db.password())
            .envs(extra_env.iter().copied());
        cmd
    };
    let mut run = Running(
        harness_on_host(&[
            ("MIXTAPE_BATCH", "20"),
            ("MIXTAPE_FAULT", "worker-change@100:hold=120"),
            ("MIXTAPE_FAULT_RELEASE", &release_arg),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let said = Said::of(&mut run);
    wait_until(Duration::from_secs(30), "a batch", || recorded(&db).2 > 2);
    host.cut();
    let cut_at = Instant::now();
    let status = wait_exit(&mut run, Duration::from_secs(60), "the cut-off harness");
    let stopped = cut_at.elapsed();
    let text = said.text();
    assert!(!status.success(), "the cut-off harness succeeded:\n{text}");
    assert!(
        text.contains("lost the connection to the work store"),
        "no clear error:\n{text}"
    );
    // Its workers are gone too: nothing runs on the host any more.
    wait_until(
        Duration::from_secs(10),
        "the host's processes ending",
        || {
            std::process::Command::new("ip")
                .args(["netns", "pids", &host.name])
                .output()
                .is_ok_and(|o| o.stdout.is_empty())
        },
    );
    let bound = 2.0 * LEASE_SECS;
    assert!(
        stopped.as_secs_f64() < bound + 5.0,
        "stopped {stopped:?} after the cut; the bound is {bound} s"
    );
    host.mend();
    fs::write(&release, "").unwrap();
    let gone = wait_until(
        Duration::from_secs(30),
        "the server ending the host's sessions",
        || sessions_from(&db, &host) == 0,
    );
    let o = harness_on_host(&[]).output().unwrap();
    assert_ok(&o, "the same command once the network is back");
    case.assert_exact("the harness's host cut off");
    figure(
        "harness's host cut off",
        "cut to the harness stopped",
        stopped,
    );
    figure(
        "harness's host cut off",
        "link back to the server free of its sessions",
        gone,
    );
}

#[test]
fn a_session_terminated_in_the_middle_of_a_commit_leaves_the_batch_in_or_out() {
    let Some(server) = lab() else { return };
    let db = server.database("terminated");
    let case = case_from(gen::case_of(34, 3000));
    let release = case.dir.path().join("release");
    let release_arg = release.to_string_lossy().into_owned();
    let mut run = Running(
        case.harness(&db.url(), 1, &["--chunks", "2", "--lease-secs", LEASE])
            .env("MIXTAPE_BATCH", "20")
            .env("MIXTAPE_FAULT", "worker-write@4:hold=120")
            .env("MIXTAPE_FAULT_RELEASE", &release_arg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let said = Said::of(&mut run);
    // The worker is inside its fourth batch's transaction, before COMMIT.
    let pid = || -> Option<i32> {
        db.client()
            .query_opt(
                // Held: idle in its transaction for longer than any batch
                // takes (other transactions pass through that state briefly).
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                   AND state = 'idle in transaction'
                   AND clock_timestamp() - state_change > interval '500 milliseconds'",
                &[],
            )
            .unwrap()
            .map(|row| row.get(0))
    };
    let mut held = None;
    wait_until(
        Duration::from_secs(30),
        "a batch inside its transaction",
        || {
            held = pid();
            held.is_some()
        },
    );
    let batches_before = recorded(&db).2;
    let terminated_at = Instant::now();
    let ended: bool = db
        .client()
        .query_one("SELECT pg_terminate_backend($1)", &[&held.unwrap()])
        .unwrap()
        .get(0);
    assert!(ended, "pg_terminate_backend");
    fs::write(&release, "").unwrap();
    let status = wait_exit(&mut run, Duration::from_secs(60), "the harness");
    let stopped = terminated_at.elapsed();
    let text = said.text();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("lost the connection to the work store"),
        "{text}"
    );
    // Not half: the batch's rows are not there, and the chunk did not move.
    assert_eq!(
        recorded(&db).2,
        batches_before,
        "the terminated batch counted"
    );
    let half: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM mixtape.rejects r JOIN mixtape.chunks c
               ON r.idx >= c.first_index AND r.idx < c.first_index + c.changes
             WHERE NOT r.by_merge AND r.idx >= c.next_index",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(half, 0, "rejects of the terminated batch were recorded");
    // Not twice: the same command finishes with the reference's bytes.
    let o = case.run(&db.url(), 1, &["--chunks", "2", "--lease-secs", LEASE]);
    assert_ok(&o, "the same command again");
    case.assert_exact("a session terminated mid-commit");
    figure(
        "session terminated mid-commit",
        "termination to the harness stopped",
        stopped,
    );
}

#[test]
fn a_lost_run_lock_session_keeps_a_second_harness_out_and_is_taken_again() {
    let Some(server) = lab() else { return };
    let db = server.database("lock");
    let case = case_from(gen::case_of(35, 3000));
    let release = case.dir.path().join("release");
    let release_arg = release.to_string_lossy().into_owned();
    let mut first = Running(
        case.harness(&db.url(), 1, &["--chunks", "2", "--lease-secs", LEASE])
            .env("MIXTAPE_BATCH", "20")
            .env("MIXTAPE_FAULT", "worker-change@50:hold=120")
            .env("MIXTAPE_FAULT_RELEASE", &release_arg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let said = Said::of(&mut first);
    wait_until(Duration::from_secs(30), "a batch", || recorded(&db).2 > 0);
    // One of the run lock's sessions ends, as an administrator would end it.
    let ended: i64 = db
        .client()
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
             WHERE pid = (SELECT min(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended, 1, "no run lock session to end");
    // A second harness still cannot take the run over.
    let second = case.run(&db.url(), 1, &["--chunks", "2", "--lease-secs", LEASE]);
    assert!(
        !second.status.success(),
        "a second harness took the run over"
    );
    assert!(
        stderr(&second).contains("another harness run is using the work store"),
        "{}",
        stderr(&second)
    );
    // The first notices before its next stage and takes the lock again.
    fs::write(&release, "").unwrap();
    let status = wait_exit(&mut first, Duration::from_secs(60), "the first harness");
    let text = said.text();
    assert!(status.success(), "{text}");
    assert!(text.contains("took the lock again"), "{text}");
    case.assert_exact("a lost run lock session");
}
