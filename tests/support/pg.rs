//! A real PostgreSQL server for the tests (README "Testing"): the one that
//! `PGHOST`, `PGPORT`, `PGUSER` and `PGPASSWORD` point at, as `pg_virtualenv`
//! sets them. Each test gets a database of its own, dropped afterwards, so
//! tests run in parallel without sharing a run.
//!
//! Without a server the PostgreSQL tests are skipped, saying so, unless
//! `MIXTAPE_REQUIRE_PG` is set (as `.ci/run` does): then they fail.

use std::sync::atomic::{AtomicU64, Ordering};

/// The server, or `None` (skip) when there is none and none is required.
pub fn server() -> Option<Server> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("PGHOST"), var("PGUSER")) {
        (Some(host), Some(user)) => Some(Server {
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
    pub host: String,
    pub port: String,
    pub user: String,
    pub password: String,
}

impl Server {
    fn admin(&self) -> postgres::Client {
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
        let s = &self.server;
        format!(
            "postgresql://{}@{}:{}/{}",
            s.user, s.host, s.port, self.name
        )
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
