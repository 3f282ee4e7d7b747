//! The PostgreSQL work store: the same tables and operations as the SQLite
//! file, in a schema `mixtape` of a database on a server, so that workers on
//! other hosts can share a run (docs/GUIDE.md "Running on several hosts").
//!
//! What differs from SQLite, and why:
//!
//! - **Schema.** Everything lives in the schema `mixtape`, with `meta` holding
//!   `program = mixtape` and the schema version. A schema of that name without
//!   them belongs to another program and is never touched; a run made by
//!   another version is refused.
//! - **Leases** use the server's clock (`clock_timestamp()`), so hosts whose
//!   clocks disagree still agree on when a lease expires. A claim takes the
//!   first free chunk with `FOR UPDATE SKIP LOCKED`: two workers asking at once
//!   get different chunks without waiting for each other.
//! - **A batch** locks its chunk's row (`FOR UPDATE`) and checks the claim's
//!   token and position in the same transaction as its rows, which go in by
//!   binary `COPY`: one round trip per table per batch, never one per change.
//! - **Id indexes** are files, as with SQLite, built by the import on the
//!   harness's host and stored in `mixtape.indexes` once; a worker on another
//!   host fetches them once into its cache directory (the file names carry
//!   the run's id, so a cache never serves another run).
//! - **Order** is only ever by integer columns, so the server's collation
//!   cannot change a byte of the output.
//! - **Streams** (a partition's blocks, the final playlists, the rejects) are
//!   read through a portal of a transaction on a second connection of their
//!   own, a page of rows at a time: the rows are handed over with the main
//!   connection free, so a callback may query the store (the merge looks up
//!   document playlists while it reads blocks). One stream at a time per store:
//!   a stream started from inside another is an error, never a panic. Every
//!   statement takes its values as bind parameters; no SQL is put together
//!   from values.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::{Client, Row, Transaction};

use super::{
    reason_of, AlreadyMerged, Backend, Batch, ChunkRow, Claim, Claimed, DocumentSink, Each,
    EachMember, EachPlaylist, IdKind, Key, LeaseLost, LockTiming, Param, PartitionResults,
    Statement, Tables, FATE_NEW, SCHEMA_VERSION, SELECT_CHUNK, SELECT_CHUNKS,
};
use crate::changes::chunk::Plan;
use crate::changes::reject::{Reason, Reject};
use crate::run::stage::Stage;

pub(super) mod target;
mod tls;
pub use target::PgTarget;

const SCHEMA: &str = "
CREATE SCHEMA mixtape;
CREATE TABLE mixtape.meta(key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE mixtape.playlists(seq bigint PRIMARY KEY, raw text NOT NULL);
CREATE TABLE mixtape.extras(seq bigint PRIMARY KEY, key text NOT NULL, raw text NOT NULL);
CREATE TABLE mixtape.chunks(
    chunk bigint PRIMARY KEY,
    start_offset bigint NOT NULL,
    end_offset bigint NOT NULL,
    first_index bigint NOT NULL,
    changes bigint NOT NULL,
    next_offset bigint NOT NULL,
    next_index bigint NOT NULL,
    auto_count bigint NOT NULL DEFAULT 0,
    max_playlist_id bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    done boolean NOT NULL DEFAULT false,
    lease_token bigint NOT NULL DEFAULT 0,
    lease_owner text,
    lease_expires timestamptz
);
CREATE TABLE mixtape.blocks(id bigserial PRIMARY KEY, part bigint NOT NULL, chunk bigint NOT NULL, data bytea NOT NULL);
CREATE INDEX blocks_by_part ON mixtape.blocks(part, chunk, id);
CREATE TABLE mixtape.rejects(idx bigint NOT NULL, op text NOT NULL, reason text NOT NULL, detail text NOT NULL, by_merge boolean NOT NULL);
CREATE TABLE mixtape.merged(part bigint PRIMARY KEY, warnings bigint NOT NULL);
CREATE TABLE mixtape.results(id text NOT NULL, state bigint NOT NULL, doc_seq bigint, created bigint, json text);
CREATE TABLE mixtape.indexes(kind text PRIMARY KEY, data bytea NOT NULL, sha256 text NOT NULL);
";

/// Rows fetched per round trip when a stage streams a table.
const FETCH_ROWS: i32 = 10_000;

/// Document elements sent per `COPY` during the import.
const IMPORT_ROWS: usize = 20_000;

/// A PostgreSQL work store, open: one connection for statements, and one
/// opened when first needed for streams (see the module docs).
pub(super) struct PgDb {
    client: RefCell<Client>,
    target: PgTarget,
    streams: RefCell<Option<Client>>,
}

/// A bind parameter of a statement.
type Bind<'a> = &'a (dyn postgres::types::ToSql + Sync);

impl PgDb {
    /// Makes the schema, replacing a `mixtape` schema of this program (never
    /// another program's).
    pub(super) fn create(target: &PgTarget) -> Result<PgDb> {
        let db = PgDb::connect(target)?;
        if db.schema_exists()? {
            db.check_ours(target)?;
            db.client
                .borrow_mut()
                .batch_execute("DROP SCHEMA mixtape CASCADE")?;
        }
        let run_id = format!(
            "{:016x}",
            crate::run::fingerprint::fnv1a(
                format!("{:?}{}", Instant::now(), std::process::id()).as_bytes()
            )
        );
        let mut client = db.client.borrow_mut();
        let mut tx = client.transaction()?;
        tx.batch_execute(SCHEMA)?;
        for (key, value) in [
            ("program", "mixtape".to_string()),
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("run_id", run_id),
        ] {
            tx.execute(
                "INSERT INTO mixtape.meta(key, value) VALUES ($1, $2)",
                &[&key, &value],
            )?;
        }
        tx.commit()?;
        drop(client);
        Ok(db)
    }

    /// Opens the store of a run made by this version.
    pub(super) fn open(target: &PgTarget) -> Result<PgDb> {
        let db = PgDb::connect(target)?;
        if !db.schema_exists()? {
            bail!("no work store in {} (no schema mixtape)", target.shown());
        }
        db.check_ours(target)?;
        let version = db.meta_text("schema_version")?.unwrap_or_default();
        if version != SCHEMA_VERSION.to_string() {
            bail!(
                "the work store in {} was made by another version of mixtape (schema {version}, expected {SCHEMA_VERSION}); pass --fresh to start over",
                target.shown()
            );
        }
        if !target::silence_follows_a_lease() {
            // A worker learns the run's lease here: this process's
            // connections bound their silence by it, this one from now on.
            let lease = db.meta_text(super::Key::LeaseSecs.name())?;
            let secs = lease.and_then(|text| text.parse::<f64>().ok());
            if let Some(secs) = secs.filter(|s| s.is_finite() && *s > 0.0) {
                if target::bound_silence_by_lease(Duration::from_secs_f64(secs)) {
                    return PgDb::connect(target);
                }
            }
        }
        Ok(db)
    }

    pub(super) fn connect(target: &PgTarget) -> Result<PgDb> {
        Ok(PgDb {
            client: RefCell::new(target.connect()?),
            target: target.clone(),
            streams: RefCell::new(None),
        })
    }

    pub(super) fn schema_exists(&self) -> Result<bool> {
        let row = self.client.borrow_mut().query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'mixtape'",
            &[],
        )?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// Fails unless the schema `mixtape` was made by this program.
    fn check_ours(&self, target: &PgTarget) -> Result<()> {
        let has_meta = self.client.borrow_mut().query_one(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema = 'mixtape' AND table_name = 'meta'",
            &[],
        )?;
        let ours = has_meta.get::<_, i64>(0) > 0
            && self.meta_text("program").ok().flatten().as_deref() == Some("mixtape");
        if !ours {
            return Err(super::NotOurs {
                store: target.shown(),
            }
            .into());
        }
        Ok(())
    }

    /// Drops the schema (after a successful run).
    pub(super) fn drop_schema(&self) -> Result<()> {
        self.client
            .borrow_mut()
            .batch_execute("DROP SCHEMA IF EXISTS mixtape CASCADE")?;
        Ok(())
    }

    /// The run's id, which names the id index files cached on each host.
    pub(super) fn run_id(&self) -> Result<String> {
        self.meta_text("run_id")?
            .context("work store has no run id: was it made by an unfinished run?")
    }

    /// Stores the id index files the import built, for other hosts.
    fn store_index(&self, kind: &str, path: &Path) -> Result<()> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let hash = sha256_hex(&data);
        self.client.borrow_mut().execute(
            "INSERT INTO mixtape.indexes(kind, data, sha256) VALUES ($1, $2, $3)
             ON CONFLICT (kind) DO UPDATE SET data = EXCLUDED.data, sha256 = EXCLUDED.sha256",
            &[&kind, &data, &hash],
        )?;
        Ok(())
    }

    /// The hash recorded with a stored id index.
    fn index_hash(&self, kind: &str) -> Result<Option<String>> {
        Ok(self
            .client
            .borrow_mut()
            .query_opt(
                "SELECT sha256 FROM mixtape.indexes WHERE kind = $1",
                &[&kind],
            )?
            .map(|row| row.get(0)))
    }

    /// Fetches a stored id index into `path` (through a temporary and a rename).
    fn load_index(&self, kind: &str, path: &Path) -> Result<()> {
        let row = self.client.borrow_mut().query_opt(
            "SELECT data, sha256 FROM mixtape.indexes WHERE kind = $1",
            &[&kind],
        )?;
        let Some(row) = row else {
            bail!("the work store has no {kind} index yet: has the import finished?");
        };
        let data: &[u8] = row.get(0);
        let recorded: &str = row.get(1);
        if sha256_hex(data) != recorded {
            bail!("the work store's {kind} index does not match its recorded hash");
        }
        let dir = crate::run::paths::directory_of(path);
        crate::run::private_file::private_dir(dir)?;
        // A name no one can predict, created exclusively and 0600
        // (tempfile's defaults), renamed over the cached copy when whole.
        let mut temp = tempfile::Builder::new()
            .prefix(".index.")
            .tempfile_in(dir)
            .with_context(|| format!("caching an id index in {}", dir.display()))?;
        std::io::Write::write_all(&mut temp, data)
            .with_context(|| format!("writing {}", temp.path().display()))?;
        temp.as_file().sync_all()?;
        temp.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}", path.display()))?;
        crate::run::paths::sync_directory_of(path)
    }

    /// Streams the rows of `sql` (with `params`) to `each`, [`FETCH_ROWS`] at
    /// a time, through a portal of a read-only transaction on the streaming
    /// connection (see the module docs): `each` runs with the main connection
    /// free and may query the store.
    fn each_row(
        &self,
        sql: &str,
        params: &[Bind],
        each: &mut dyn FnMut(&Row) -> Result<()>,
    ) -> Result<()> {
        self.with_stream(|tx| {
            let portal = tx.bind(sql, params)?;
            loop {
                let rows = tx.query_portal(&portal, FETCH_ROWS)?;
                for row in &rows {
                    each(row)?;
                }
                if rows.len() < FETCH_ROWS as usize {
                    return Ok(());
                }
            }
        })
    }

    /// Runs `stream` in a transaction of the streaming connection (opened on
    /// first use), committed when it succeeds and rolled back when it fails.
    fn with_stream(&self, stream: impl FnOnce(&mut Transaction) -> Result<()>) -> Result<()> {
        let mut streams = self
            .streams
            .try_borrow_mut()
            .map_err(|_| anyhow::anyhow!("work store: a stream was started inside another"))?;
        if streams.is_none() {
            *streams = Some(self.target.connect()?);
        }
        let client = streams.as_mut().expect("connected above");
        let mut tx = client.build_transaction().read_only(true).start()?;
        stream(&mut tx)?;
        Ok(tx.commit()?)
    }

    fn each_first_column(&self, sql: &str, params: &[Bind], each: &mut Each) -> Result<()> {
        self.each_row(sql, params, &mut |row| {
            let value: &[u8] = match row.columns()[0].type_() {
                &Type::BYTEA => row.get(0),
                _ => row.get::<_, &str>(0).as_bytes(),
            };
            each(value)
        })
    }

    fn number(&self, sql: &str) -> Result<u64> {
        let row = self.client.borrow_mut().query_one(sql, &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// The rows of `portal`, [`FETCH_ROWS`] per round trip, each made a `T` by
/// `read`; several such streams of one transaction may be read in turns.
fn paged<'t, 'c, T, R: Fn(&Row) -> T + 't>(
    tx: &'t RefCell<&'t mut Transaction<'c>>,
    portal: &'t postgres::Portal,
    read: R,
) -> impl Iterator<Item = Result<T>> + use<'t, 'c, T, R> {
    let mut page = Vec::new().into_iter();
    let mut more = true;
    std::iter::from_fn(move || loop {
        if let Some(row) = page.next() {
            return Some(Ok(read(&row)));
        }
        if !more {
            return None;
        }
        match tx.borrow_mut().query_portal(portal, FETCH_ROWS) {
            Ok(rows) => {
                more = rows.len() == FETCH_ROWS as usize;
                page = rows.into_iter();
            }
            Err(e) => {
                more = false;
                return Some(Err(e.into()));
            }
        }
    })
}

/// The advisory lock's key: "mixtape!" in ASCII.
const ADVISORY_LOCK_KEY: i64 = 0x6d69_7874_6170_6521;

/// Whether `error` says that a connection to the server broke: closed,
/// reset or silent past its bound (an I/O error), or its session ended by the
/// server (shut down, restarting, or `pg_terminate_backend`).
pub(super) fn is_lost_connection(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let Some(e) = cause.downcast_ref::<postgres::Error>() else {
            return false;
        };
        let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
        let ended = e.as_db_error().is_some_and(|db| {
            // admin_shutdown, crash_shutdown, cannot_connect_now
            matches!(db.code().code(), "57P01" | "57P02" | "57P03")
        });
        e.is_closed() || io || ended
    })
}

/// The run lock of a server store: two session advisory locks, each held by
/// a connection of its own. A session can end under a running harness (an
/// administrator, a pooler, a network fault): its lock goes with it, but the
/// other one stays, and a second harness needs both, so it still cannot take
/// the run over. [`ServerRunLock::keep_held`] notices a lost one and takes
/// it again.
pub(super) struct ServerRunLock {
    target: PgTarget,
    /// The sessions, one per key of [`RUN_LOCK_KEYS`]; `None` once lost.
    sessions: [Option<Client>; 2],
}

/// The advisory lock keys of the run lock (see [`ServerRunLock`]).
const RUN_LOCK_KEYS: [i64; 2] = [ADVISORY_LOCK_KEY, ADVISORY_LOCK_KEY + 1];

/// How a run-lock session names itself to the server (`application_name`),
/// so that an administrator (or a test) can tell it from the others.
const RUN_LOCK_APPLICATION: &str = "mixtape run lock";

/// Takes the run lock of a server store, or fails at once if another run
/// holds it (either key).
pub(super) fn take_run_lock(target: &PgTarget) -> Result<ServerRunLock> {
    let mut sessions = [None, None];
    for (slot, key) in sessions.iter_mut().zip(RUN_LOCK_KEYS) {
        match lock_session(target, key)? {
            Some(session) => *slot = Some(session),
            None => bail!(
                "another harness run is using the work store {} (its advisory lock is held); wait for it to finish",
                target.shown()
            ),
        }
    }
    Ok(ServerRunLock {
        target: target.clone(),
        sessions,
    })
}

/// A new session holding advisory lock `key`; `None` when another holds it.
fn lock_session(target: &PgTarget, key: i64) -> Result<Option<Client>> {
    let mut client = target.connect()?;
    client.execute(
        "SELECT set_config('application_name', $1, false)",
        &[&RUN_LOCK_APPLICATION],
    )?;
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
        .get(0);
    Ok(got.then_some(client))
}

impl ServerRunLock {
    /// Checks that both sessions still hold their locks, taking a lost one
    /// again; says how many were taken again. Fails when both were lost
    /// (another harness may then hold the run) or a lost one cannot be taken
    /// again within a second (a second harness tries both keys and lets go
    /// of the first when the second is held, so it holds one only briefly).
    pub(super) fn keep_held(&mut self) -> Result<usize> {
        for slot in &mut self.sessions {
            let alive = slot
                .as_mut()
                .is_some_and(|session| session.query_one("SELECT 1", &[]).is_ok());
            if !alive {
                *slot = None;
            }
        }
        let lost = self.sessions.iter().filter(|s| s.is_none()).count();
        if lost == 2 {
            bail!(
                "this run lost its lock on the work store {} (both of its sessions ended): another harness may have taken the run over; stopping (run the same command again once no other harness runs)",
                self.target.shown()
            );
        }
        for (slot, key) in self.sessions.iter_mut().zip(RUN_LOCK_KEYS) {
            if slot.is_some() {
                continue;
            }
            for _ in 0..50 {
                if let Some(session) = lock_session(&self.target, key)? {
                    *slot = Some(session);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if slot.is_none() {
                bail!(
                    "this run lost one of its locks on the work store {} and another session holds it; stopping",
                    self.target.shown()
                );
            }
        }
        Ok(lost)
    }
}

/// Drops the store's schema (after a successful run); returns the run's id,
/// which names the id index files cached on this host, if there was a store.
pub(super) fn drop_store(target: &PgTarget) -> Result<Option<String>> {
    let db = PgDb::connect(target)?;
    let tag = if db.schema_exists()? {
        db.run_id().ok()
    } else {
        None
    };
    db.drop_schema()?;
    Ok(tag)
}

/// SHA-256 of `data`, in hex: how a cached id index is recognised.
fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn set_meta(tx: &mut Transaction, key: &str, value: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO mixtape.meta(key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&key, &value],
    )?;
    Ok(())
}

fn secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

impl Tables for PgDb {
    fn each_document_playlist_between(
        &self,
        from: u64,
        to: u64,
        each: &mut EachPlaylist,
    ) -> Result<()> {
        self.each_row(
            "SELECT seq, raw FROM mixtape.playlists WHERE seq >= $1 AND seq < $2 ORDER BY seq",
            &[&(from as i64), &(to as i64)],
            &mut |row| {
                each(
                    row.get::<_, i64>(0) as u64,
                    row.get::<_, &str>(1).as_bytes(),
                )
            },
        )
    }

    fn save_plan(&self, plan: &Plan, partitions: u64) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        tx.execute("DELETE FROM mixtape.chunks", &[])?;
        let insert = tx.prepare(
            "INSERT INTO mixtape.chunks(chunk, start_offset, end_offset, first_index, changes, next_offset, next_index)
             VALUES ($1, $2, $3, $4, $5, $2, $4)",
        )?;
        for (k, c) in plan.chunks.iter().enumerate() {
            let values = [
                k as i64,
                c.start as i64,
                c.end as i64,
                c.first_index as i64,
                c.changes as i64,
            ];
            tx.execute(
                &insert,
                &[&values[0], &values[1], &values[2], &values[3], &values[4]],
            )?;
        }
        set_meta(&mut tx, Key::Form.name(), plan.form.name())?;
        set_meta(&mut tx, Key::Changes.name(), &plan.changes.to_string())?;
        set_meta(&mut tx, Key::Partitions.name(), &partitions.to_string())?;
        set_meta(&mut tx, done_marker(Stage::Plan), "1")?;
        Ok(tx.commit()?)
    }

    fn chunks(&self) -> Result<Vec<ChunkRow>> {
        let rows = self.client.borrow_mut().query(SELECT_CHUNKS, &[])?;
        rows.iter().map(chunk_row).collect()
    }

    fn chunk(&self, chunk: u64) -> Result<Option<ChunkRow>> {
        let row = self
            .client
            .borrow_mut()
            .query_opt(SELECT_CHUNK, &[&(chunk as i64)])?;
        row.as_ref().map(chunk_row).transpose()
    }

    fn batches_committed(&self) -> Result<u64> {
        self.number("SELECT coalesce(sum(batches), 0)::bigint FROM mixtape.chunks")
    }

    fn claim_next(&self, owner: &str, lease: Duration) -> Result<Claimed> {
        let claimed = self.client.borrow_mut().query_opt(
            "UPDATE mixtape.chunks
             SET lease_token = lease_token + 1, lease_owner = $1,
                 lease_expires = clock_timestamp() + make_interval(secs => $2)
             WHERE chunk = (
                 SELECT chunk FROM mixtape.chunks
                 WHERE NOT done AND (lease_owner IS NULL OR lease_expires < clock_timestamp())
                 ORDER BY chunk LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING chunk, lease_token",
            &[&owner, &secs(lease)],
        )?;
        if let Some(row) = claimed {
            return Ok(Claimed::Chunk(Claim {
                chunk: row.get::<_, i64>(0) as u64,
                token: row.get::<_, i64>(1) as u64,
            }));
        }
        let left = self.number("SELECT count(*) FROM mixtape.chunks WHERE NOT done")?;
        Ok(super::when_none_is_free(left))
    }

    fn claim_chunk(&self, chunk: u64, owner: &str, lease: Duration) -> Result<Claim> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        let row = tx.query_opt(
            "SELECT lease_owner, done, coalesce(extract(epoch FROM lease_expires - clock_timestamp())::float8, -1)
             FROM mixtape.chunks WHERE chunk = $1 FOR UPDATE",
            &[&(chunk as i64)],
        )?;
        let Some(row) = row else {
            bail!("chunk {chunk} does not exist");
        };
        super::refuse_if_leased(chunk, row.get(0), row.get(1), row.get(2), owner)?;
        let token: i64 = tx
            .query_one(
                "UPDATE mixtape.chunks SET lease_token = lease_token + 1, lease_owner = $2,
                     lease_expires = clock_timestamp() + make_interval(secs => $3)
                 WHERE chunk = $1 RETURNING lease_token",
                &[&(chunk as i64), &owner, &secs(lease)],
            )?
            .get(0);
        tx.commit()?;
        Ok(Claim {
            chunk,
            token: token as u64,
        })
    }

    fn leases(&self) -> Result<Vec<(Claim, String)>> {
        let rows = self.client.borrow_mut().query(
            "SELECT chunk, lease_token, lease_owner FROM mixtape.chunks
             WHERE NOT done AND lease_owner IS NOT NULL AND lease_expires >= clock_timestamp()",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let claim = Claim {
                    chunk: r.get::<_, i64>(0) as u64,
                    token: r.get::<_, i64>(1) as u64,
                };
                (claim, r.get(2))
            })
            .collect())
    }

    fn renew_lease(&self, claim: Claim, lease: Duration) -> Result<()> {
        let renewed = self.client.borrow_mut().execute(
            "UPDATE mixtape.chunks SET lease_expires = clock_timestamp() + make_interval(secs => $1)
             WHERE chunk = $2 AND lease_token = $3",
            &[&secs(lease), &(claim.chunk as i64), &(claim.token as i64)],
        )?;
        if renewed != 1 {
            return Err(LeaseLost { chunk: claim.chunk }.into());
        }
        Ok(())
    }

    fn release_lease(&self, claim: Claim) -> Result<()> {
        self.client.borrow_mut().execute(
            "UPDATE mixtape.chunks SET lease_owner = NULL, lease_expires = NULL
             WHERE chunk = $1 AND lease_token = $2",
            &[&(claim.chunk as i64), &(claim.token as i64)],
        )?;
        Ok(())
    }

    fn commit_batch(&self, batch: &Batch) -> Result<LockTiming> {
        let asked = Instant::now();
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        let chunk = batch.claim.chunk as i64;
        let ours = tx.query_opt(
            "SELECT 1 FROM mixtape.chunks
             WHERE chunk = $1 AND lease_token = $2 AND next_offset = $3 AND NOT done FOR UPDATE",
            &[
                &chunk,
                &(batch.claim.token as i64),
                &(batch.from_offset as i64),
            ],
        )?;
        let got = Instant::now();
        if ours.is_none() {
            return Err(LeaseLost {
                chunk: batch.claim.chunk,
            }
            .into());
        }
        {
            let sink = tx.copy_in("COPY mixtape.blocks(part, chunk, data) FROM STDIN BINARY")?;
            let mut writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::BYTEA]);
            for (partition, data) in batch.blocks.iter().enumerate() {
                if !data.is_empty() {
                    writer.write(&[&(partition as i64), &chunk, data])?;
                }
            }
            writer.finish()?;
        }
        copy_rejects(&mut tx, batch.rejects, false)?;
        tx.execute(
            "UPDATE mixtape.chunks SET next_offset = $2, next_index = $3, auto_count = $4,
                 max_playlist_id = $5, batches = batches + 1, done = $6,
                 lease_expires = clock_timestamp() + make_interval(secs => $7)
             WHERE chunk = $1",
            &[
                &chunk,
                &(batch.next_offset as i64),
                &(batch.next_index as i64),
                &(batch.auto_count as i64),
                &(batch.max_playlist_id as i64),
                &batch.done,
                &secs(batch.lease),
            ],
        )?;
        crate::run::fault::point("worker-write");
        tx.commit()?;
        let timing = LockTiming {
            waited: got - asked,
            held: got.elapsed(),
        };
        crate::run::fault::point("worker-commit");
        Ok(timing)
    }

    fn merged_partitions(&self) -> Result<Vec<u64>> {
        let rows = self
            .client
            .borrow_mut()
            .query("SELECT part FROM mixtape.merged", &[])?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    fn each_block(&self, partition: u64, each: &mut Each) -> Result<()> {
        self.each_first_column(
            "SELECT data FROM mixtape.blocks WHERE part = $1 ORDER BY chunk, id",
            &[&(partition as i64)],
            each,
        )
    }

    fn is_merged(&self, partition: u64) -> Result<bool> {
        Ok(self
            .client
            .borrow_mut()
            .query_opt(
                "SELECT 1 FROM mixtape.merged WHERE part = $1",
                &[&(partition as i64)],
            )?
            .is_some())
    }

    fn commit_partition(&self, partition: u64, out: &PartitionResults) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        // First the partition's row: its key admits one, and a worker merging
        // the same partition at once waits here, then finds it taken.
        let inserted = tx.execute(
            "INSERT INTO mixtape.merged(part, warnings) VALUES ($1, $2) ON CONFLICT (part) DO NOTHING",
            &[&(partition as i64), &(out.warnings as i64)],
        )?;
        if inserted != 1 {
            return Err(AlreadyMerged { partition }.into());
        }
        {
            let sink = tx.copy_in(
                "COPY mixtape.results(id, state, doc_seq, created, json) FROM STDIN BINARY",
            )?;
            let types = [Type::TEXT, Type::INT8, Type::INT8, Type::INT8, Type::TEXT];
            let mut writer = BinaryCopyInWriter::new(sink, &types);
            for r in &out.results {
                let (state, doc_seq, created, json) = r.fate.columns();
                writer.write(&[&r.id, &state, &doc_seq, &created, &json])?;
            }
            writer.finish()?;
        }
        copy_rejects(&mut tx, &out.rejects, true)?;
        crate::run::fault::point("merge-partition");
        Ok(tx.commit()?)
    }

    fn finish_merge(&self) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        // Keeps out a chunk's reset (which deletes from merged) until the
        // marker is in: the count below stays true until the commit.
        tx.batch_execute("LOCK TABLE mixtape.merged IN SHARE ROW EXCLUSIVE MODE")?;
        let merged: i64 = tx
            .query_one("SELECT count(*) FROM mixtape.merged", &[])?
            .get(0);
        let partitions: Option<String> = tx
            .query_opt(
                "SELECT value FROM mixtape.meta WHERE key = 'partitions'",
                &[],
            )?
            .map(|r| r.get(0));
        super::check_merge_complete(merged as u64, partitions.as_deref())?;
        set_meta(&mut tx, done_marker(Stage::Merge), "1")?;
        Ok(tx.commit()?)
    }

    fn warnings(&self) -> Result<u64> {
        self.number("SELECT coalesce(sum(warnings), 0)::bigint FROM mixtape.merged")
    }

    fn each_final_document_playlist(
        &self,
        positions: std::ops::Range<u64>,
        each: &mut Each,
    ) -> Result<()> {
        // The two streams of the join (super::join_final_document_playlists):
        // two portals of one transaction of the streaming connection, read a
        // page at a time in turns; `each` runs with the main connection free.
        let (from, to) = (
            super::signed_bound(positions.start),
            super::signed_bound(positions.end),
        );
        self.with_stream(|tx| {
            let docs = tx.bind(
                "SELECT seq, raw FROM mixtape.playlists WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                &[&from, &to],
            )?;
            let fates = tx.bind(
                "SELECT doc_seq, state, json FROM mixtape.results
                 WHERE doc_seq >= $1 AND doc_seq < $2 ORDER BY doc_seq",
                &[&from, &to],
            )?;
            let tx = RefCell::new(tx);
            let docs = paged(&tx, &docs, |row| {
                (row.get(0), row.get::<_, &str>(1).as_bytes().to_vec())
            });
            let fates = paged(&tx, &fates, |row| {
                let json: Option<&str> = row.get(2);
                (row.get(0), row.get(1), json.map(|j| j.as_bytes().to_vec()))
            });
            super::join_final_document_playlists(docs, fates, each)
        })
    }

    fn each_new_playlist(&self, created: std::ops::Range<u64>, each: &mut Each) -> Result<()> {
        self.each_first_column(
            "SELECT json FROM mixtape.results
             WHERE state = $1 AND created >= $2 AND created < $3 ORDER BY created",
            &[
                &FATE_NEW,
                &super::signed_bound(created.start),
                &super::signed_bound(created.end),
            ],
            each,
        )
    }

    fn each_extra(&self, each: &mut EachMember) -> Result<()> {
        self.each_row(
            "SELECT key, raw FROM mixtape.extras ORDER BY seq",
            &[],
            &mut |row| {
                each(
                    row.get::<_, &str>(0).as_bytes(),
                    row.get::<_, &str>(1).as_bytes(),
                )
            },
        )
    }

    fn each_reject(&self, each: &mut dyn FnMut(Reject) -> Result<()>) -> Result<()> {
        self.each_row(
            "SELECT idx, op, reason, detail FROM mixtape.rejects ORDER BY idx",
            &[],
            &mut |row| {
                each(Reject {
                    index: row.get::<_, i64>(0) as u64,
                    op_json: crate::changes::change::op_json_of(row.get(1)),
                    reason: reason_of(row.get(2))?,
                    detail: row.get(3),
                })
            },
        )
    }

    fn rejects_by_reason(&self) -> Result<Vec<(Reason, u64)>> {
        let rows = self.client.borrow_mut().query(
            "SELECT reason, count(*) FROM mixtape.rejects GROUP BY reason",
            &[],
        )?;
        super::counted_by_reason(
            (rows.iter()).map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)),
        )
    }
}

impl Backend for PgDb {
    fn run_in_one_transaction(&self, statements: &[Statement]) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        // The shared statements clear the merge's tables. Under READ
        // COMMITTED each statement sees what committed before it, so a
        // partition committed between two of them would lose its `merged`
        // row but keep its results (and be merged twice). Locking `merged`
        // first makes a partition's commit (its first write is to `merged`)
        // wait for the clear, or the clear for the commit: as on SQLite,
        // where a write transaction holds the one write lock.
        tx.batch_execute("LOCK TABLE mixtape.merged IN EXCLUSIVE MODE")?;
        for statement in statements {
            match statement.param {
                None => tx.execute(statement.sql, &[])?,
                Some(Param::Number(n)) => tx.execute(statement.sql, &[&n])?,
                Some(Param::Text(text)) => tx.execute(statement.sql, &[&text])?,
            };
            crate::run::fault::point("clear-statement");
        }
        Ok(tx.commit()?)
    }

    fn index_tag(&self) -> Result<Option<String>> {
        Ok(Some(self.run_id()?))
    }

    fn publish_index(&self, kind: IdKind, path: &Path) -> Result<()> {
        self.store_index(kind.array_name(), path)
    }

    fn fetch_index(&self, kind: IdKind, path: &Path) -> Result<()> {
        self.load_index(kind.array_name(), path)
    }

    fn cached_index_is_current(&self, kind: IdKind, path: &Path) -> Result<bool> {
        let Some(recorded) = self.index_hash(kind.array_name())? else {
            return Ok(false);
        };
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(sha256_hex(&data) == recorded)
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>> {
        let row = self
            .client
            .borrow_mut()
            .query_opt("SELECT value FROM mixtape.meta WHERE key = $1", &[&key])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn set_meta_texts(&self, pairs: &[(&str, &str)]) -> Result<()> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        for (key, value) in pairs {
            set_meta(&mut tx, key, value)?;
        }
        Ok(tx.commit()?)
    }

    fn document_writer(&self) -> Result<Box<dyn DocumentSink + '_>> {
        Ok(Box::new(PgDocumentWriter {
            db: self,
            cleared: false,
            playlists: Vec::new(),
            extras: Vec::new(),
        }))
    }

    fn playlist_at(&self, seq: u64) -> Result<Option<(i64, String)>> {
        let row = self.client.borrow_mut().query_opt(
            "SELECT seq, raw FROM mixtape.playlists WHERE seq = $1",
            &[&(seq as i64)],
        )?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }
}

fn done_marker(stage: Stage) -> &'static str {
    stage.done_marker().expect("a stage with a marker")
}

fn chunk_row(r: &Row) -> Result<ChunkRow> {
    ChunkRow::from_columns(|i| Ok(r.try_get::<_, i64>(i)? as u64), r.try_get(9)?)
}

fn copy_rejects(tx: &mut Transaction, rejects: &[Reject], by_merge: bool) -> Result<()> {
    if rejects.is_empty() {
        return Ok(());
    }
    let sink =
        tx.copy_in("COPY mixtape.rejects(idx, op, reason, detail, by_merge) FROM STDIN BINARY")?;
    let types = [Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::BOOL];
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for r in rejects {
        writer.write(&[
            &(r.index as i64),
            &r.op_json.as_ref(),
            &r.reason.name(),
            &r.detail,
            &by_merge,
        ])?;
    }
    writer.finish()?;
    Ok(())
}

/// Writes the document's elements by binary `COPY`, [`IMPORT_ROWS`] at a
/// time, each batch in a transaction: the first one also clears what an
/// earlier import left, the last one also sets the import's `meta` values and
/// done-marker (as with SQLite: a marker never commits without its rows).
struct PgDocumentWriter<'a> {
    db: &'a PgDb,
    /// Whether the first batch (which clears the tables) has committed.
    cleared: bool,
    playlists: Vec<(i64, String)>,
    extras: Vec<(i64, String, String)>,
}

impl PgDocumentWriter<'_> {
    fn flush(&mut self, meta: &[(&str, String)]) -> Result<()> {
        let mut client = self.db.client.borrow_mut();
        let mut tx = client.transaction()?;
        if !self.cleared {
            // (The id indexes are replaced whole when published, just before
            // the last batch: they are not cleared here.)
            tx.batch_execute("DELETE FROM mixtape.playlists; DELETE FROM mixtape.extras")?;
        }
        if !self.playlists.is_empty() {
            let sink = tx.copy_in("COPY mixtape.playlists(seq, raw) FROM STDIN BINARY")?;
            let mut writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT]);
            for (seq, raw) in self.playlists.drain(..) {
                writer.write(&[&seq, &raw])?;
            }
            writer.finish()?;
        }
        for (seq, key, raw) in self.extras.drain(..) {
            tx.execute(
                "INSERT INTO mixtape.extras(seq, key, raw) VALUES ($1, $2, $3)",
                &[&seq, &key, &raw],
            )?;
        }
        for (key, value) in meta {
            set_meta(&mut tx, key, value)?;
        }
        tx.commit()?;
        self.cleared = true;
        Ok(())
    }
}

impl DocumentSink for PgDocumentWriter<'_> {
    fn playlist(
        &mut self,
        position: u64,
        raw: &str,
        _in_mixtape: Option<std::ops::Range<u64>>,
    ) -> Result<()> {
        // Always the text: workers on other hosts merge, and they have no
        // MIXTAPE to read.
        self.playlists.push((position as i64, raw.to_string()));
        if self.playlists.len() >= IMPORT_ROWS {
            self.flush(&[])?;
        }
        Ok(())
    }

    fn extra(&mut self, seq: u64, key: &str, raw: &str) -> Result<()> {
        self.extras
            .push((seq as i64, key.to_string(), raw.to_string()));
        Ok(())
    }

    fn finish(mut self: Box<Self>, meta: &[(&str, String)]) -> Result<()> {
        self.flush(meta)
    }
}
