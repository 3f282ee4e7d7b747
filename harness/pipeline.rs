//! The run, stage after stage, each skipped when the work database says it is
//! done: import → plan → apply (workers) → merge → export.
//!
//! This module decides whether to resume or start fresh, takes the run lock,
//! draws each stage's bar, honours `--stop-after`, and prints the summary. The
//! stages themselves live in the library, one module each.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use rusqlite::Connection;

use mixtape::{exit_codes, export, fingerprint, import, merge, plan, workdb};

use crate::cli::{Config, Stage};
use crate::progress::Ui;
use crate::workers::{self, PendingChunk};

/// An input, as recorded in the work database.
struct Input {
    label: &'static str,
    path: PathBuf,
    fingerprint: String,
}

impl Input {
    fn open(label: &'static str, path: &Path) -> Result<Input> {
        let fingerprint = fingerprint::of_file(path)
            .with_context(|| format!("cannot read {label} {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot read {label} {}", path.display()))?;
        Ok(Input {
            label,
            path,
            fingerprint,
        })
    }

    fn key(&self) -> String {
        self.label.to_ascii_lowercase()
    }

    /// Why the database's record of this input differs from the file, if it does.
    fn changed_since(&self, conn: &Connection) -> Result<Option<String>> {
        let path = workdb::meta_get(conn, &format!("{}_path", self.key()))?;
        let print = workdb::meta_get(conn, &format!("{}_fingerprint", self.key()))?;
        Ok(if path.as_deref() != Some(&*self.path.to_string_lossy()) {
            Some(format!(
                "{} is another file than the work database was made from",
                self.label
            ))
        } else if print.as_deref() != Some(&self.fingerprint) {
            Some(format!(
                "{} changed since the work database was made",
                self.label
            ))
        } else {
            None
        })
    }

    fn record(&self, conn: &Connection) -> Result<()> {
        workdb::meta_set(
            conn,
            &format!("{}_path", self.key()),
            self.path.to_string_lossy(),
        )?;
        workdb::meta_set(
            conn,
            &format!("{}_fingerprint", self.key()),
            &self.fingerprint,
        )
    }
}

/// Opens the work database to resume from, or makes a new one.
fn open_or_create(config: &Config, inputs: &[Input], ui: &Ui) -> Result<Connection> {
    if config.db.exists() && !config.fresh {
        let conn = workdb::open_existing(&config.db).with_context(|| {
            format!(
                "cannot resume; pass --fresh to discard {}",
                config.db.display()
            )
        })?;
        let mut why_fresh = None;
        for input in inputs {
            if let Some(why) = input.changed_since(&conn)? {
                why_fresh = Some(why);
                break;
            }
        }
        match why_fresh {
            None => return Ok(conn),
            Some(why) => ui.message(&format!("harness: starting fresh: {why}")),
        }
    }
    let conn = workdb::create(&config.db)?;
    for input in inputs {
        input.record(&conn)?;
    }
    Ok(conn)
}

/// Says what a resumed run finds already done.
fn describe_resume(conn: &Connection) -> Result<Option<String>> {
    if !workdb::is_done(conn, "import")? {
        return Ok(None);
    }
    let mut done = vec!["import".to_string()];
    if workdb::is_done(conn, "plan")? {
        done.push("plan".into());
        let chunks = plan::load_chunks(conn)?;
        let applied = chunks.iter().filter(|c| c.2).count();
        done.push(format!("{applied} of {} chunks applied", chunks.len()));
    }
    if workdb::is_done(conn, "merge")? {
        done.push("merge".into());
    }
    Ok(Some(done.join(", ")))
}

/// Runs the job; returns the exit code.
pub fn run(config: &Config) -> Result<u8> {
    let started = Instant::now();
    let mut times = StageTimes::default();
    let ui = Ui::new(config.draw_progress);
    let inputs = [
        Input::open("MIXTAPE", &config.mixtape)?,
        Input::open("CHANGES", &config.changes)?,
    ];
    for (what, path) in [
        ("OUTPUT", &config.output),
        ("work database", &config.db),
        ("rejects report", &config.rejects),
    ] {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            anyhow::bail!("{what} directory {} does not exist", dir.display());
        }
    }
    let lock = workdb::RunLock::acquire(&config.db)?;
    let mut conn = open_or_create(config, &inputs, &ui)?;
    if let Some(done) = describe_resume(&conn)? {
        ui.message(&format!(
            "harness: resuming from {}: {done}",
            config.db.display()
        ));
    }
    let stopped = |stage: &str, times: &StageTimes| {
        ui.message(&format!(
            "harness: stopped after {stage}; the work database is kept at {} (run the same command without --stop-after to continue)",
            config.db.display()
        ));
        if std::env::var_os("MIXTAPE_BENCH").is_some() {
            ui.final_message(&times.bench_line(started.elapsed().as_secs_f64()));
        }
        Ok(exit_codes::SUCCESS)
    };

    if !workdb::is_done(&conn, "import")? {
        let size = std::fs::metadata(&config.mixtape)?.len();
        let _t = times.start(0);
        let bar = ui.bytes_bar("import", size);
        let figures = import::import(&mut conn, &config.mixtape, &mut |b| bar.set(b))?;
        bar.finish(&format!(
            "{} users, {} playlists, {} songs",
            figures.users, figures.playlists, figures.songs
        ));
    }
    mixtape::interrupt::check()?;
    if config.stop_after == Some(Stage::Import) {
        return stopped("import", &times);
    }

    if !workdb::is_done(&conn, "plan")? {
        let size = std::fs::metadata(&config.changes)?.len();
        let _t = times.start(1);
        let bar = ui.bytes_bar("plan", size);
        let planned = plan::plan(&config.changes, config.workers, &mut |b| bar.set(b))?;
        plan::store(&mut conn, &planned, size)?;
        bar.finish(&format!(
            "{} changes ({} form) in {} chunk(s)",
            planned.changes,
            planned.form.name(),
            planned.chunks.len()
        ));
    }
    mixtape::interrupt::check()?;
    if config.stop_after == Some(Stage::Plan) {
        return stopped("plan", &times);
    }

    let chunks = plan::load_chunks(&conn)?;
    let pending: Vec<PendingChunk> = {
        let mut stmt = conn.prepare("SELECT chunk, end - start, next_offset - start FROM chunks WHERE done = 0 ORDER BY chunk")?;
        let rows = stmt.query_map([], |r| {
            Ok(PendingChunk {
                chunk: r.get(0)?,
                bytes: r.get(1)?,
                done_bytes: r.get(2)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    if !pending.is_empty() {
        if chunks.len() != config.workers && pending.len() < chunks.len() {
            ui.message(&format!(
                "harness: continuing the stored plan of {} chunk(s); {} remain",
                chunks.len(),
                pending.len()
            ));
        }
        let worker = std::env::current_exe()
            .context("finding the harness executable")?
            .with_file_name("worker");
        let _t = times.start(2);
        times.lock = workers::run(&worker, &config.db, &pending, &ui)?;
        workdb::checkpoint(&conn)?;
    }
    if config.stop_after == Some(Stage::Apply) {
        return stopped("apply", &times);
    }

    if !workdb::is_done(&conn, "merge")? {
        let partitions = workdb::meta_number(&conn, "partitions")?;
        let _t = times.start(3);
        let bar = ui.count_bar("merge", partitions);
        // More merge threads than cores only adds memory (each has a cache and
        // a partition's playlists), so --workers is capped by the CPU count.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = config.workers.min(cpus);
        merge::merge(&mut conn, &config.db, threads, &mut |done, _| bar.set(done))?;
        bar.finish(&format!("{partitions} partitions"));
    }
    mixtape::interrupt::check()?;
    if config.stop_after == Some(Stage::Merge) {
        return stopped("merge", &times);
    }

    let export_started = times.start(4);
    let bar = ui.count_bar("export", 2);
    let by_reason = export::rejects_by_reason(&conn)?;
    let rejected: u64 = by_reason.iter().map(|(_, n)| n).sum();
    export::write_rejects(&conn, &config.rejects)?;
    bar.set(1);
    let strict_failure = config.strict && rejected > 0;
    if !strict_failure {
        export::write_output(&conn, &config.output)?;
    }
    bar.set(2);
    bar.finish(&if strict_failure {
        format!(
            "rejects to {} (no output: --strict)",
            config.rejects.display()
        )
    } else {
        format!(
            "{} and {}",
            config.output.display(),
            config.rejects.display()
        )
    });

    drop(export_started);
    let changes = workdb::meta_number(&conn, "changes")?;
    let warnings = merge::warnings(&conn)?;
    let reasons = if by_reason.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        format!(" ({})", list.join(", "))
    };
    let warning_text = if warnings > 0 {
        format!("; {warnings} input playlist(s) name a missing owner or song")
    } else {
        String::new()
    };
    ui.final_message(&format!(
        "harness: {changes} changes read, {} applied, {rejected} rejected{reasons}{warning_text}; {:.2}s ({})",
        changes - rejected.min(changes),
        started.elapsed().as_secs_f64(),
        times.describe()
    ));
    if std::env::var_os("MIXTAPE_BENCH").is_some() {
        ui.final_message(&times.bench_line(started.elapsed().as_secs_f64()));
    }

    if strict_failure {
        ui.final_message(&format!(
            "harness: --strict: {rejected} change(s) rejected, so no output was written; see {}",
            config.rejects.display()
        ));
        return Ok(exit_codes::REJECTED);
    }
    drop(conn);
    if !config.keep_db {
        workdb::remove_files(&config.db)?;
    }
    lock.release_and_remove();
    Ok(exit_codes::SUCCESS)
}

/// Wall time of each stage this run did (a resumed run skips some).
#[derive(Default)]
struct StageTimes {
    seconds: std::rc::Rc<std::cell::RefCell<[Option<f64>; 5]>>,
    /// The workers' time with the write lock (summed over workers).
    lock: workers::LockFigures,
}

const STAGE_NAMES: [&str; 5] = ["import", "plan", "apply", "merge", "export"];

/// Adds the time until it is dropped to its stage.
struct StageTimer {
    stage: usize,
    started: Instant,
    seconds: std::rc::Rc<std::cell::RefCell<[Option<f64>; 5]>>,
}

impl Drop for StageTimer {
    fn drop(&mut self) {
        self.seconds.borrow_mut()[self.stage] = Some(self.started.elapsed().as_secs_f64());
    }
}

impl StageTimes {
    fn start(&mut self, stage: usize) -> StageTimer {
        StageTimer {
            stage,
            started: Instant::now(),
            seconds: self.seconds.clone(),
        }
    }

    /// `import 1.20s, plan 0.40s, ...` for the stages this run did.
    fn describe(&self) -> String {
        let seconds = self.seconds.borrow();
        let done: Vec<String> = STAGE_NAMES
            .iter()
            .zip(seconds.iter())
            .filter_map(|(name, s)| s.map(|s| format!("{name} {s:.2}s")))
            .collect();
        done.join(", ")
    }

    /// One machine-readable line for the benchmark (`MIXTAPE_BENCH=1`): stage
    /// times, total, and the peak RSS of the harness and of its largest worker.
    fn bench_line(&self, total: f64) -> String {
        use nix::sys::resource::{getrusage, UsageWho};
        let rss = |who| getrusage(who).map(|u| u.max_rss()).unwrap_or(0);
        let seconds = self.seconds.borrow();
        let mut line = String::from("bench:");
        for (name, s) in STAGE_NAMES.iter().zip(seconds.iter()) {
            line.push_str(&format!(" {name}={:.3}", s.unwrap_or(0.0)));
        }
        line.push_str(&format!(
            " apply_lock_held={:.3} apply_lock_wait={:.3}",
            self.lock.held.as_secs_f64(),
            self.lock.waited.as_secs_f64()
        ));
        line.push_str(&format!(
            " total={total:.3} harness_rss_kb={} worker_rss_kb={}",
            rss(UsageWho::RUSAGE_SELF),
            rss(UsageWho::RUSAGE_CHILDREN)
        ));
        line
    }
}
