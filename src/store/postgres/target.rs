//! Where a PostgreSQL work store is, and how to reach it without ever showing
//! its password.
//!
//! A `postgresql://` (or `postgres://`) URL is taken apart here, once:
//! user, host, port, database, `sslmode`, `sslrootcert`, and other libpq
//! parameters passed on. What is missing comes from libpq's environment
//! (`PGUSER`, `PGHOST`, `PGPORT`, `PGDATABASE`), and the password, when the
//! URL has none, from `PGPASSWORD` or the password file (`PGPASSFILE`, by
//! default `~/.pgpass`), as libpq does.
//!
//! The password never appears in a message or on a command line (other users
//! see every process's arguments): [`PgTarget::shown`] masks it,
//! [`PgTarget::argument`] leaves it out, and the harness hands it to its
//! workers in their environment (`PGPASSWORD`).
//!
//! ## Silence
//!
//! A host cut off from the network does not get an error: its packets just
//! stop arriving, on both ends. So every connection is opened with a bound on
//! silence ([`silence_bound`], docs/GUIDE.md "When a host dies"): twice the run's
//! lease, at least 4 s and at most 5 minutes. On this side, TCP keepalives
//! (probes after a third of it) and `TCP_USER_TIMEOUT` make a read or write
//! on a silent connection fail within the bound; on the server's side the
//! session asks for the same of its socket (`tcp_keepalives_*`,
//! `tcp_user_timeout`) and ends a transaction left idle that long
//! (`idle_in_transaction_session_timeout`), so that the row locks of a host
//! cut off mid-transaction are released for the others. Connecting waits at
//! most 10 s (or the bound, when shorter).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use postgres::Client;

use super::tls::Tls;

/// A PostgreSQL work store's address, with the password kept aside.
#[derive(Clone)]
pub struct PgTarget {
    scheme: String,
    user: String,
    host: String,
    port: u16,
    dbname: String,
    /// Parameters other than the TLS ones, passed on to the driver.
    params: Vec<(String, String)>,
    password: Option<String>,
    /// Whether the password came from the URL (it is masked when shown).
    password_in_url: bool,
    pub tls: Tls,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    /// Where this host keeps files that go with the store (see
    /// [`crate::store::Location::local_base`]).
    pub local_base: PathBuf,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTarget({})", self.shown())
    }
}

impl PartialEq for PgTarget {
    fn eq(&self, other: &PgTarget) -> bool {
        self.argument() == other.argument()
    }
}

impl Eq for PgTarget {}

/// Whether `text` names a PostgreSQL store.
pub fn is_url(text: &str) -> bool {
    text.starts_with("postgresql://") || text.starts_with("postgres://")
}

impl PgTarget {
    /// Takes a URL apart; `local_base` is where this host keeps the store's files.
    pub fn parse(url: &str, local_base: PathBuf) -> Result<PgTarget> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("not a postgresql:// URL");
        };
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, dbname) = base.split_once('/').unwrap_or((base, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (decode(user)?, Some(decode(pw)?)),
                None => (decode(u)?, None),
            },
            None => (String::new(), None),
        };
        let (host, port) = split_host_port(hostport)?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let user = non_empty(user)
            .or_else(|| env("PGUSER"))
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".into());
        let host = non_empty(host)
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| "localhost".into());
        let port = match port {
            Some(p) => p,
            None => env("PGPORT")
                .map_or(Ok(5432), |p| p.parse())
                .context("PGPORT")?,
        };
        let dbname = non_empty(decode(dbname)?)
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let mut target = PgTarget {
            scheme: scheme.to_string(),
            password_in_url: password.is_some(),
            password,
            user,
            host,
            port,
            dbname,
            params: Vec::new(),
            tls: Tls::Off,
            sslmode: None,
            sslrootcert: None,
            local_base,
        };
        target.take_params(query)?;
        if target.password.is_none() {
            target.password = env("PGPASSWORD").or_else(|| target.password_from_file());
        }
        Ok(target)
    }

    fn take_params(&mut self, query: &str) -> Result<()> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value)?;
            match key {
                "sslmode" => self.sslmode = Some(value),
                "sslrootcert" => self.sslrootcert = Some(value),
                "password" => bail!(
                    "put the password in PGPASSWORD or ~/.pgpass, not in the URL's parameters"
                ),
                _ => self.params.push((key.to_string(), value)),
            }
        }
        let root = self.sslrootcert.as_ref().map(PathBuf::from);
        self.tls = match self.sslmode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => Tls::Off,
            Some("require") => match root {
                Some(root) => Tls::Verify {
                    root: Some(root),
                    host: false,
                },
                None => Tls::Require,
            },
            Some("verify-ca") => Tls::Verify { root, host: false },
            Some("verify-full") => Tls::Verify { root, host: true },
            Some(other) => bail!(
                "unknown sslmode {other:?} (disable, prefer, require, verify-ca, verify-full)"
            ),
        };
        Ok(())
    }

    /// The password for this host, port, database and user in the password
    /// file, as libpq reads it (`*` matches anything).
    fn password_from_file(&self) -> Option<String> {
        let path = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
        // As libpq: a file others may read is ignored, with a warning.
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).ok()?.permissions());
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: password file {} has group or world access; it is ignored (chmod 0600 it)",
                path.display()
            );
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        let port = self.port.to_string();
        let wanted = [self.host.as_str(), &port, &self.dbname, &self.user];
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let fields = split_pgpass(line);
                if fields.len() != 5 {
                    return None;
                }
                let matches = fields[..4]
                    .iter()
                    .zip(wanted)
                    .all(|(field, want)| field == "*" || field == want);
                matches.then(|| fields[4].clone())
            })
    }

    /// The URL without the password: what a worker's command line carries.
    pub fn argument(&self) -> String {
        self.url(None)
    }

    /// The URL as messages show it: the password, if the URL had one, masked.
    pub fn shown(&self) -> String {
        self.url(self.password_in_url.then_some("***"))
    }

    /// The password, to hand to workers in their environment.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    fn url(&self, password: Option<&str>) -> String {
        let mut url = format!("{}://{}", self.scheme, encode(&self.user));
        if let Some(pw) = password {
            url.push(':');
            url.push_str(pw);
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        url.push_str(&format!("@{host}:{}/{}", self.port, encode(&self.dbname)));
        let mut params: Vec<(String, String)> = self.params.clone();
        if let Some(mode) = &self.sslmode {
            params.push(("sslmode".into(), mode.clone()));
        }
        if let Some(root) = &self.sslrootcert {
            params.push(("sslrootcert".into(), root.clone()));
        }
        for (i, (k, v)) in params.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={}", encode(v)));
        }
        url
    }

    /// Connects, with TLS when `sslmode` asks for it, bounded in silence
    /// (see the module docs).
    pub fn connect(&self) -> Result<Client> {
        let silence = silence_bound();
        // Keepalive times are whole seconds, at least one (the kernel's unit).
        let secs = silence.as_secs().max(1);
        let (idle, interval) = ((secs / 3).max(1), (secs / 6).max(1));
        let mut config = postgres::Config::new();
        config
            .user(&self.user)
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .application_name("mixtape")
            .connect_timeout(silence.min(MAX_CONNECT_WAIT))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(idle))
            .keepalives_interval(Duration::from_secs(interval))
            .keepalives_retries(3)
            .tcp_user_timeout(silence);
        for (key, value) in &self.params {
            match key.as_str() {
                "connect_timeout" => {
                    let secs: u64 = value.parse().context("connect_timeout")?;
                    config.connect_timeout(Duration::from_secs(secs));
                }
                "application_name" => {
                    config.application_name(value);
                }
                "options" => {
                    config.options(value);
                }
                other => bail!("unsupported parameter {other:?} in the work store's URL"),
            }
        }
        if let Some(pw) = &self.password {
            config.password(pw);
        }
        let connected = match &self.tls {
            Tls::Off => config.connect(postgres::NoTls),
            tls => {
                config.ssl_mode(postgres::config::SslMode::Require);
                config.connect(super::tls::connector(tls)?)
            }
        };
        let mut client = connected
            .with_context(|| format!("cannot connect to the work store {}", self.shown()))?;
        // The statements of the rules written once for both backends
        // (`store::Statement`) name the run's tables unqualified.
        let millis = silence.as_millis();
        client
            .execute("SELECT set_config('search_path', 'mixtape', false)", &[])
            .and_then(|_| {
                client.execute(
                    "SELECT set_config('tcp_keepalives_idle', $1, false),
                            set_config('tcp_keepalives_interval', $2, false),
                            set_config('tcp_keepalives_count', '3', false),
                            set_config('tcp_user_timeout', $3, false),
                            set_config('idle_in_transaction_session_timeout', $3, false)",
                    &[
                        &idle.to_string(),
                        &interval.to_string(),
                        &millis.to_string(),
                    ],
                )
            })
            .with_context(|| format!("setting up the connection to {}", self.shown()))?;
        Ok(client)
    }
}

/// The lease this process's connections bound their silence by (see
/// [`silence_bound`]); set once, from the harness's `--lease-secs` or from
/// the lease a worker finds in the store.
static LEASE_FOR_SILENCE: OnceLock<Duration> = OnceLock::new();

/// The longest a connection attempt waits (or the bound on silence, when
/// shorter): a server that does not answer within it is not there.
const MAX_CONNECT_WAIT: Duration = Duration::from_secs(10);

/// The lease assumed until one is known: the harness's default.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Sets the lease the bound on silence follows; says whether it was unset
/// (later calls change nothing: connections already open keep their bound).
pub fn bound_silence_by_lease(lease: Duration) -> bool {
    LEASE_FOR_SILENCE.set(lease).is_ok()
}

/// Whether [`bound_silence_by_lease`] has been called.
pub fn silence_follows_a_lease() -> bool {
    LEASE_FOR_SILENCE.get().is_some()
}

/// How long a connection may be silent before it counts as broken: twice
/// the lease, within 4 s and 5 minutes. A host that comes back within its
/// lease goes on; one that comes back after it learns that it was fenced
/// off; one silent longer gets an error.
pub fn silence_bound() -> Duration {
    let lease = LEASE_FOR_SILENCE.get().copied().unwrap_or(DEFAULT_LEASE);
    (lease * 2).clamp(Duration::from_secs(4), Duration::from_secs(300))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .context("unclosed [ in the URL's host")?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() => Some(p.parse().with_context(|| format!("bad port {p:?}"))?),
        _ => None,
    };
    Ok((decode(&host)?, port))
}

/// Percent-decoding (RFC 3986).
fn decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            let value = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(value) = value else {
                bail!("bad percent escape in the URL");
            };
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("the URL is not UTF-8 once decoded")
}

/// Percent-encoding of what is not unreserved (RFC 3986).
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `.pgpass` line's fields: `:` separates, `\` escapes.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> PgTarget {
        PgTarget::parse(url, PathBuf::from("/tmp/x")).unwrap()
    }

    #[test]
    fn the_password_is_never_shown_nor_passed_on() {
        let t = parse("postgresql://me:s%40cret@db.example:6543/runs?sslmode=require");
        assert_eq!(t.password(), Some("s@cret"));
        assert_eq!(
            t.argument(),
            "postgresql://me@db.example:6543/runs?sslmode=require"
        );
        assert_eq!(
            t.shown(),
            "postgresql://me:***@db.example:6543/runs?sslmode=require"
        );
        assert!(!format!("{t:?}").contains("cret"));
        assert_eq!(t.tls, Tls::Require);
    }

    #[test]
    fn ipv6_hosts_and_verify_full() {
        let t = parse("postgres://u@[::1]:5433/d?sslmode=verify-full&sslrootcert=/ca.pem");
        assert_eq!(
            t.argument(),
            "postgres://u@[::1]:5433/d?sslmode=verify-full&sslrootcert=/ca.pem"
        );
        assert_eq!(
            t.tls,
            Tls::Verify {
                root: Some("/ca.pem".into()),
                host: true
            }
        );
    }

    #[test]
    fn pgpass_lines_split_on_unescaped_colons() {
        assert_eq!(
            split_pgpass(r"h:5432:*:u:pa\:ss"),
            ["h", "5432", "*", "u", "pa:ss"]
        );
    }
}
