//! The run, stage after stage, each skipped when the store says it is done:
//! import → plan → apply (workers) → merge → export.
//!
//! [`run`] is the dispatcher: it checks where the results will go, takes the run
//! lock, decides whether to resume or start fresh, then walks [`Stage::ALL`],
//! handing each stage to one small function of [`Run`] and honouring
//! `--stop-after`. The stages themselves live in the library, one module each;
//! this module only draws their bars and says what they did.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use mixtape::exit_codes::Exit;
use mixtape::stage::Stage;
use mixtape::store::{InputKind, Key, RunLock, Store};
use mixtape::{export, fingerprint, import, merge, output_file, plan, store};

use crate::cli::Config;
use crate::progress::Ui;
use crate::workers::{self, LockFigures, PendingChunk};

/// An input, as the store records it.
struct Input {
    kind: InputKind,
    path: PathBuf,
    fingerprint: String,
}

impl Input {
    fn open(kind: InputKind, path: &Path) -> Result<Input> {
        let cannot_read = || format!("cannot read {} {}", kind.label(), path.display());
        let fingerprint = fingerprint::of_file(path).with_context(cannot_read)?;
        let path = path.canonicalize().with_context(cannot_read)?;
        Ok(Input {
            kind,
            path,
            fingerprint,
        })
    }

    /// Why the store's record of this input differs from the file, if it does.
    fn changed_since(&self, store: &Store) -> Result<Option<String>> {
        let (path, print) = store.recorded_input(self.kind)?;
        let label = self.kind.label();
        Ok(if path.as_deref() != Some(&*self.path.to_string_lossy()) {
            Some(format!(
                "{label} is another file than the work database was made from"
            ))
        } else if print.as_deref() != Some(&self.fingerprint) {
            Some(format!("{label} changed since the work database was made"))
        } else {
            None
        })
    }

    fn record(&self, store: &Store) -> Result<()> {
        store.record_input(self.kind, &self.path.to_string_lossy(), &self.fingerprint)
    }
}

/// Runs the job; returns how the process should exit.
pub fn run(config: &Config) -> Result<Exit> {
    let started = Instant::now();
    let ui = Ui::new(config.draw_progress);
    let inputs = [
        Input::open(InputKind::Mixtape, &config.mixtape)?,
        Input::open(InputKind::Changes, &config.changes)?,
    ];
    // Before any work: a run that cannot write its results must not spend an
    // hour finding out, nor leave a work database behind.
    output_file::check_writable("OUTPUT", &config.output)?;
    output_file::check_writable("rejects report", &config.rejects)?;
    output_file::check_writable("work database", &config.db)?;
    let lock = RunLock::acquire(&config.db)?;
    output_file::remove_stale_temporaries(&config.output)?;
    output_file::remove_stale_temporaries(&config.rejects)?;
    let store = open_or_create(config, &inputs, &ui)?;
    let mut run = Run {
        config,
        ui,
        store,
        times: StageTimes::default(),
        started,
    };
    run.say_what_resumes()?;
    for stage in Stage::ALL {
        if stage == Stage::Export {
            break;
        }
        run.stage(stage)?;
        if config.stop_after == Some(stage) {
            return Ok(run.stopped_after(stage));
        }
    }
    let exit = run.export()?;
    if exit == Exit::Success {
        drop(run.store);
        if !config.keep_db {
            store::remove_files(&config.db)?;
        }
        lock.release_and_remove();
    }
    Ok(exit)
}

/// Opens the work database to resume from, or makes a new one.
fn open_or_create(config: &Config, inputs: &[Input], ui: &Ui) -> Result<Store> {
    if config.db.exists() && !config.fresh {
        let store = Store::open(&config.db).with_context(|| {
            format!(
                "cannot resume; pass --fresh to discard {}",
                config.db.display()
            )
        })?;
        let mut why_fresh = None;
        for input in inputs {
            why_fresh = input.changed_since(&store)?;
            if why_fresh.is_some() {
                break;
            }
        }
        match why_fresh {
            None => return Ok(store),
            Some(why) => ui.message(&format!("harness: starting fresh: {why}")),
        }
    }
    let store = Store::create(&config.db)?;
    for input in inputs {
        input.record(&store)?;
    }
    Ok(store)
}

/// One run in progress: what every stage needs.
struct Run<'a> {
    config: &'a Config,
    ui: Ui,
    store: Store,
    times: StageTimes,
    started: Instant,
}

impl Run<'_> {
    /// Runs `stage` unless the store says it is done.
    fn stage(&mut self, stage: Stage) -> Result<()> {
        if !self.store.is_done(stage)? {
            let started = Instant::now();
            match stage {
                Stage::Import => self.import()?,
                Stage::Plan => self.plan()?,
                Stage::Apply => self.apply()?,
                Stage::Merge => self.merge()?,
                Stage::Export => unreachable!("export ends the run: Run::export"),
            }
            self.times.record(stage, started);
        }
        mixtape::interrupt::check()
    }

    /// Says what a resumed run finds already done.
    fn say_what_resumes(&self) -> Result<()> {
        if !self.store.is_done(Stage::Import)? {
            return Ok(());
        }
        let mut done = vec![Stage::Import.name().to_string()];
        if self.store.is_done(Stage::Plan)? {
            done.push(Stage::Plan.name().into());
            let chunks = self.store.chunks()?;
            let applied = chunks.iter().filter(|c| c.done).count();
            done.push(format!("{applied} of {} chunks applied", chunks.len()));
        }
        if self.store.is_done(Stage::Merge)? {
            done.push(Stage::Merge.name().into());
        }
        self.ui.message(&format!(
            "harness: resuming from {}: {}",
            self.config.db.display(),
            done.join(", ")
        ));
        Ok(())
    }

    fn import(&mut self) -> Result<()> {
        let size = std::fs::metadata(&self.config.mixtape)?.len();
        let bar = self.ui.bytes_bar(Stage::Import.name(), size);
        let figures = import::import(
            &self.store,
            &self.config.mixtape,
            self.threads(),
            &mut |b| bar.set(b),
        )?;
        // The ids' sort buffers are gone: give their memory back before the
        // workers start (a child's peak RSS counts what it inherits at fork).
        self.store.release_memory()?;
        bar.finish(&format!(
            "{} users, {} playlists, {} songs",
            figures.users, figures.playlists, figures.songs
        ));
        Ok(())
    }

    fn plan(&mut self) -> Result<()> {
        let size = std::fs::metadata(&self.config.changes)?.len();
        let bar = self.ui.bytes_bar(Stage::Plan.name(), size);
        let planned = plan::plan(
            &self.config.changes,
            self.config.workers,
            self.threads(),
            &mut |b| bar.set(b),
        )?;
        let playlists = self.store.meta_number(Key::Playlists)?;
        self.store
            .save_plan(&planned, plan::partitions_for(size, playlists))?;
        bar.finish(&format!(
            "{} changes ({} form) in {} chunk(s)",
            planned.changes,
            planned.form.name(),
            planned.chunks.len()
        ));
        Ok(())
    }

    fn apply(&mut self) -> Result<()> {
        let chunks = self.store.chunks()?;
        let pending: Vec<PendingChunk> = chunks
            .iter()
            .filter(|c| !c.done)
            .map(|c| PendingChunk {
                chunk: c.chunk,
                bytes: c.end - c.start,
                done_bytes: c.next_offset - c.start,
            })
            .collect();
        if chunks.len() != self.config.workers && pending.len() < chunks.len() {
            self.ui.message(&format!(
                "harness: continuing the stored plan of {} chunk(s); {} remain",
                chunks.len(),
                pending.len()
            ));
        }
        let worker = std::env::current_exe()
            .context("finding the harness executable")?
            .with_file_name("worker");
        self.times.lock = workers::run(&worker, &self.config.db, &pending, &self.ui)?;
        self.store.checkpoint()
    }

    fn merge(&mut self) -> Result<()> {
        let partitions = self.store.meta_number(Key::Partitions)?;
        let bar = self.ui.count_bar(Stage::Merge.name(), partitions);
        merge::merge(&self.store, self.threads(), &mut |done, _| bar.set(done))?;
        bar.finish(&format!("{partitions} partitions"));
        Ok(())
    }

    /// Writes the rejects report and (unless `--strict` fails) OUTPUT, then
    /// the summary.
    fn export(&mut self) -> Result<Exit> {
        let started = Instant::now();
        let config = self.config;
        let bar = self.ui.count_bar(Stage::Export.name(), 1);
        let by_reason = self.store.rejects_by_reason()?;
        let rejected: u64 = by_reason.iter().map(|(_, n)| n).sum();
        let strict_failure = config.strict && rejected > 0;
        export::export(
            &self.store,
            &export::Export {
                db: &config.db,
                mixtape: &config.mixtape,
                output: (!strict_failure).then_some(config.output.as_path()),
                rejects: &config.rejects,
                threads: self.threads(),
            },
        )?;
        bar.set(1);
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
        self.times.record(Stage::Export, started);
        self.summarize(&by_reason)?;
        if strict_failure {
            self.ui.final_message(&format!(
                "harness: --strict: {rejected} change(s) rejected, so no output was written; see {}",
                config.rejects.display()
            ));
            return Ok(Exit::Rejected);
        }
        Ok(Exit::Success)
    }

    /// Threads for the stages the harness runs itself (merge, export): one per
    /// worker, at most one per CPU (more only adds memory).
    fn threads(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.config.workers.min(cpus)
    }

    /// The run's one-line summary (and the benchmark's line when asked for).
    fn summarize(&self, by_reason: &[(mixtape::reject::Reason, u64)]) -> Result<()> {
        let changes = self.store.meta_number(Key::Changes)?;
        let rejected: u64 = by_reason.iter().map(|(_, n)| n).sum();
        let warnings = self.store.warnings()?;
        let reasons = if by_reason.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = by_reason
                .iter()
                .map(|(r, n)| format!("{} {n}", r.name()))
                .collect();
            format!(" ({})", list.join(", "))
        };
        let warning_text = if warnings > 0 {
            format!("; {warnings} input playlist(s) name a missing owner or song")
        } else {
            String::new()
        };
        self.ui.final_message(&format!(
            "harness: {changes} changes read, {} applied, {rejected} rejected{reasons}{warning_text}; {:.2}s ({})",
            changes - rejected.min(changes),
            self.started.elapsed().as_secs_f64(),
            self.times.describe()
        ));
        self.bench_line();
        Ok(())
    }

    /// Says where the run stopped, for `--stop-after`.
    fn stopped_after(&self, stage: Stage) -> Exit {
        self.ui.message(&format!(
            "harness: stopped after {}; the work database is kept at {} (run the same command without --stop-after to continue)",
            stage.name(),
            self.config.db.display()
        ));
        self.bench_line();
        Exit::Success
    }

    /// With `MIXTAPE_BENCH` set, the machine-readable line the benchmark reads.
    fn bench_line(&self) {
        if std::env::var_os("MIXTAPE_BENCH").is_some() {
            let total = self.started.elapsed().as_secs_f64();
            self.ui.final_message(&self.times.bench_line(total));
        }
    }
}

/// Wall time of each stage this run did (a resumed run skips some).
#[derive(Default)]
struct StageTimes {
    seconds: [Option<f64>; Stage::ALL.len()],
    /// The workers' time with the write lock (summed over workers).
    lock: LockFigures,
}

impl StageTimes {
    fn record(&mut self, stage: Stage, started: Instant) {
        self.seconds[stage.slot()] = Some(started.elapsed().as_secs_f64());
    }

    /// `import 1.20s, plan 0.40s, ...` for the stages this run did.
    fn describe(&self) -> String {
        let done: Vec<String> = Stage::ALL
            .iter()
            .filter_map(|stage| {
                self.seconds[stage.slot()].map(|s| format!("{} {s:.2}s", stage.name()))
            })
            .collect();
        done.join(", ")
    }

    /// One machine-readable line for the benchmark (`MIXTAPE_BENCH=1`): stage
    /// times, total, and the peak RSS of the harness and of its largest worker.
    fn bench_line(&self, total: f64) -> String {
        use nix::sys::resource::{getrusage, UsageWho};
        let rss = |who| getrusage(who).map(|u| u.max_rss()).unwrap_or(0);
        let mut line = String::from("bench:");
        for stage in Stage::ALL {
            let seconds = self.seconds[stage.slot()].unwrap_or(0.0);
            line.push_str(&format!(" {}={seconds:.3}", stage.name()));
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
