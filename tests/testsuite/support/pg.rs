//! A real PostgreSQL server for the tests (CONTRIBUTING.md "Tests"): the one that
//! `PGHOST`, `PGPORT`, `PGUSER` and `PGPASSWORD` point at, as `pg_virtualenv`
//! sets them. Each test gets a database of its own, dropped afterwards, so
//! tests run in parallel without sharing a run.
//!
//! Without a server the PostgreSQL tests are skipped, saying so, unless
//! `MIXTAPE_REQUIRE_PG` is set (as `.ci/run` does): then they fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::netns::Host;
use super::{gen, reference, stderr, TestCommand};

/// The server, or `None` (skip) when there is none and none is required.
pub fn server() -> Option<Server> {
    server_with(|| Turn::Shared(USERS.read().unwrap_or_else(|e| e.into_inner())))
}

/// The server, for this test alone: the host tests restart and reconfigure
/// it, so no other test may use it meanwhile. All the suite's tests run in
/// one process, so a lock of the process is enough.
pub fn server_alone() -> Option<Server> {
    server_with(|| Turn::Alone(USERS.write().unwrap_or_else(|e| e.into_inner())))
}

/// Who is using the test server: any number of tests, or one alone.
static USERS: RwLock<()> = RwLock::new(());

/// A test's turn on the server, held as long as its [`Server`].
pub enum Turn {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

fn server_with(turn: impl FnOnce() -> Turn) -> Option<Server> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("PGHOST"), var("PGUSER")) {
        (Some(host), Some(user)) => Some(Server {
            _turn: Some(turn()),
            host,
            port: var("PGPORT").unwrap_or_else(|| "5432".into()),
            user,
            password: var("PGPASSWORD").unwrap_or_default(),
        }),
        _ if var("MIXTAPE_REQUIRE_PG").is_some() => {
            panic!("MIXTAPE_REQUIRE_PG is set but PGHOST/PGUSER are not: no PostgreSQL server")
        }
        _ => {
            // Straight to stderr: the test harness captures eprintln! of
            // passing tests, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no PostgreSQL server (PGHOST and PGUSER unset); run under pg_virtualenv, as .ci/run does"
            );
            None
        }
    }
}

pub struct Server {
    /// `None` in a [`TestDb`]'s copy: the test's own `Server` holds the turn.
    _turn: Option<Turn>,
    pub host: String,
    pub port: String,
    pub user: String,
    pub password: String,
}

impl Server {
    pub fn admin(&self) -> postgres::Client {
        postgres::Config::new()
            .host(&self.host)
            .port(self.port.parse().unwrap())
            .user(&self.user)
            .password(&self.password)
            .dbname("postgres")
            .connect(postgres::NoTls)
            .expect("connecting to the test server")
    }

    /// A new, empty database for one test.
    pub fn database(&self, tag: &str) -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "mixtape_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.admin()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        TestDb {
            name,
            server: Server {
                _turn: None,
                host: self.host.clone(),
                port: self.port.clone(),
                user: self.user.clone(),
                password: self.password.clone(),
            },
        }
    }
}

/// A database of one test, dropped with it.
pub struct TestDb {
    pub name: String,
    server: Server,
}

impl TestDb {
    /// The URL with the password in it.
    pub fn url(&self) -> String {
        let s = &self.server;
        format!(
            "postgresql://{}:{}@{}:{}/{}",
            s.user, s.password, s.host, s.port, self.name
        )
    }

    /// The URL without a password (it comes from `PGPASSWORD`).
    pub fn url_without_password(&self) -> String {
        self.url_at(&self.server.host)
    }

    /// The URL without a password, naming the server by `address` (how a
    /// test host in its own network namespace reaches it).
    pub fn url_at(&self, address: &str) -> String {
        let s = &self.server;
        format!("postgresql://{}@{address}:{}/{}", s.user, s.port, self.name)
    }

    pub fn password(&self) -> &str {
        &self.server.password
    }

    /// A connection to this database, to look at (or tamper with) the store.
    pub fn client(&self) -> postgres::Client {
        let s = &self.server;
        postgres::Config::new()
            .host(&s.host)
            .port(s.port.parse().unwrap())
            .user(&s.user)
            .password(&s.password)
            .dbname(&self.name)
            .connect(postgres::NoTls)
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.server.admin().batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

impl Server {
    /// The throwaway cluster of `pg_virtualenv` this server is, as
    /// (version, name), when it is one: only such a cluster may be
    /// reconfigured or restarted by a test.
    pub fn throwaway_cluster(&self) -> Option<(String, String)> {
        let mut admin = self.admin();
        let show = |admin: &mut postgres::Client, what: &str| -> String {
            admin
                .query_one(&format!("SHOW {what}"), &[])
                .unwrap()
                .get(0)
        };
        let cluster = show(&mut admin, "cluster_name");
        let hba = show(&mut admin, "hba_file");
        let (version, name) = cluster.split_once('/')?;
        let expected = format!("/etc/postgresql/{version}/{name}/pg_hba.conf");
        (name == "regress" && hba == expected).then(|| (version.to_string(), name.to_string()))
    }

    /// Makes the throwaway cluster accept the test hosts (198.18.0.0/15):
    /// listening on every address and a `pg_hba.conf` line for them, then a
    /// restart. Returns false (nothing changed) when this server is not a
    /// throwaway cluster.
    pub fn accept_test_hosts(&self) -> bool {
        let Some(_) = self.throwaway_cluster() else {
            return false;
        };
        let mut admin = self.admin();
        let listening: String = admin
            .query_one("SHOW listen_addresses", &[])
            .unwrap()
            .get(0);
        let hba_file: String = admin.query_one("SHOW hba_file", &[]).unwrap().get(0);
        let hba = fs::read_to_string(&hba_file).unwrap();
        let line = "host all all 198.18.0.0/15 scram-sha-256";
        if listening == "*" && hba.contains(line) {
            return true;
        }
        if !hba.contains(line) {
            fs::write(&hba_file, format!("{hba}\n{line}\n")).unwrap();
        }
        admin
            .batch_execute("ALTER SYSTEM SET listen_addresses = '*'")
            .unwrap();
        drop(admin);
        self.restart();
        true
    }

    /// Restarts the throwaway cluster (`pg_ctlcluster ... restart -m fast`:
    /// every connection breaks at once), and waits (bounded: 30 s) until it
    /// accepts connections again.
    pub fn restart(&self) {
        let (version, name) = self.throwaway_cluster().expect("a throwaway cluster");
        let status = Command::new("pg_ctlcluster")
            .args([&version, &name, "restart", "-m", "fast"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctlcluster restart failed");
        self.wait_until_accepting();
    }

    /// Waits (bounded: 30 s) until the server accepts a connection.
    pub fn wait_until_accepting(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tried = postgres::Config::new()
                .host(&self.host)
                .port(self.port.parse().unwrap())
                .user(&self.user)
                .password(&self.password)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(2))
                .connect(postgres::NoTls);
            if tried.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the server never came back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A generated case on disk, with what the reference says it gives.
pub struct Case {
    pub dir: tempfile::TempDir,
    pub mixtape: PathBuf,
    pub changes: PathBuf,
    pub expected: reference::Outcome,
}

pub fn case_from(generated: gen::Case) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let mixtape = dir.path().join("mixtape.json");
    let changes = dir.path().join("changes.json");
    fs::write(&mixtape, &generated.mixtape).unwrap();
    fs::write(&changes, &generated.changes).unwrap();
    Case {
        expected: reference::run(&generated.mixtape, &generated.changes).unwrap(),
        dir,
        mixtape,
        changes,
    }
}

impl Case {
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out.json")
    }

    /// The harness on this case, on this host.
    pub fn harness(&self, db: &str, workers: usize, extra: &[&str]) -> Command {
        self.harness_on(None, db, workers, extra)
    }

    /// The harness on this case, on `host` (`None`: this one).
    pub fn harness_on(
        &self,
        host: Option<&Host>,
        db: &str,
        workers: usize,
        extra: &[&str],
    ) -> Command {
        let mut cmd = TestCommand::harness_on(host);
        cmd.args([
            "--progress",
            "never",
            "-w",
            &workers.to_string(),
            "--db",
            db,
        ])
        .args(extra)
        .arg(&self.mixtape)
        .arg(&self.changes)
        .arg(self.out());
        cmd.into_inner()
    }

    pub fn run(&self, db: &str, workers: usize, extra: &[&str]) -> Output {
        self.harness(db, workers, extra).output().unwrap()
    }

    pub fn assert_exact(&self, what: &str) {
        let out = self.out();
        let output = fs::read_to_string(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
        super::assert_same_text(what, &self.expected.output, &output);
        let rejects = fs::read_to_string(out.with_file_name("out.json.rejects.jsonl")).unwrap();
        super::assert_same_text(what, &self.expected.rejects, &rejects);
    }

    /// A `worker --join` as another host would start it: its own directory,
    /// cache and environment; the URL (without password) and CHANGES shared.
    pub fn joined_worker(&self, db: &TestDb, home: &Path, env: &[(&str, &str)]) -> Child {
        self.joined_worker_on(None, db, &db.url_without_password(), home, env)
    }

    /// [`Case::joined_worker`] on `host`, reaching the store at `url`.
    pub fn joined_worker_on(
        &self,
        host: Option<&Host>,
        db: &TestDb,
        url: &str,
        home: &Path,
        env: &[(&str, &str)],
    ) -> Child {
        let mut cmd = TestCommand::worker_on(host);
        cmd.env_clear()
            .env("PGPASSWORD", db.password())
            .env("XDG_CACHE_HOME", home.join("cache"))
            .envs(env.iter().copied())
            .current_dir(home)
            .args(["--db", url, "--join"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    }
}

/// The store of `db`, as a test opens it to look at its state.
pub fn server_location(db: &TestDb) -> mixtape::store::Location {
    let local = std::env::temp_dir().join("mixtape-test-unused");
    mixtape::store::Location::from_argument(db.url().as_ref(), &local).unwrap()
}

pub fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", stderr(o));
}
