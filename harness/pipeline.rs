//! The run, stage after stage, each skipped when the store says it is done:
//! decompress (compressed inputs only) → import → plan → apply (workers) →
//! merge → export.
//!
//! [`run`] is the dispatcher: it checks where the results will go, takes the run
//! lock, decides whether to resume or start fresh, then walks [`Stage::ALL`],
//! handing each stage to one small function of [`Run`] and honouring
//! `--stop-after`. The stages themselves live in the library, one module each;
//! this module only draws their bars and says what they did.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use mixtape::run::exit_codes::Exit;
use mixtape::stages::input::{Input, Inputs};
use mixtape::stages::Stage;
use mixtape::store::{InputKind, Key, RunLock, Store};
use mixtape::{stages::decompress, stages::export, stages::import, stages::merge, stages::plan};

use crate::cli::Config;
use crate::progress::Ui;
use crate::report::{self, Counts, Ordered, Report, Seconds};
use crate::workers::{self, LockFigures};

/// Runs the job; returns how the process should exit.
pub fn run(config: &Config) -> Result<Exit> {
    let started = Instant::now();
    let ui = Ui::new(config.draw_progress);
    // Every connection to a server store is bounded in silence by this run's
    // lease (docs/GUIDE.md "When a host dies").
    mixtape::store::bound_silence_by_lease(config.lease);
    config
        .paths
        .check_writable(config.stages_to_stdout(), config.dry_run)?;
    config.paths.db.refuse_foreign_file()?;
    let mut lock = RunLock::acquire(&config.paths.db)?;
    // After the lock: an input read from standard input is kept beside the
    // work database, which this run alone may write.
    let inputs = Inputs {
        mixtape: open_input(InputKind::Mixtape, &config.paths.mixtape, config, &ui)?,
        changes: open_input(InputKind::Changes, &config.paths.changes, config, &ui)?,
    };
    config.paths.remove_stale_temporaries()?;
    let (store, opened) = open_or_create(config, &inputs, &ui)?;
    store.set_lease(config.lease)?;
    let mut run = Run {
        config,
        ui,
        store,
        inputs,
        resumed: opened != Opened::Fresh,
        times: StageTimes::default(),
        started,
    };
    if opened == Opened::Finished {
        run.ui.message(&format!(
            "harness: OUTPUT {} is already in place: the run that made the work database {} finished it; nothing is applied again",
            config.paths.output.display(),
            config.paths.db.display()
        ));
        run.summarize()?;
        run.report(Exit::Success, None, true)?;
        return run.clean_up(lock);
    }
    run.say_what_resumes()?;
    if let Some(exit) = run.stages_before_export(&mut lock)? {
        return Ok(exit);
    }
    run.export_and_finish(lock)
}

/// Opens an input of the run: the file at `path`, or standard input (`-`),
/// read once into a file kept beside the work database, with a bar.
fn open_input(kind: InputKind, path: &std::path::Path, config: &Config, ui: &Ui) -> Result<Input> {
    let files = &config.paths.work_files;
    if path.as_os_str() != "-" {
        let input = Input::open(kind, path, files)?;
        return Ok(match config.paths.db.file() {
            Some(_) => input.copied_while_imported(files),
            None => input,
        });
    }
    let bar = ui.bytes_bar("stdin", 0);
    let input = Input::from_stdin(kind, files, &mut |read| {
        bar.set_message(format!(
            "{}: {} read",
            kind.label(),
            indicatif::HumanBytes(read)
        ));
    })?;
    bar.finish(&format!(
        "{} from standard input: {} kept at {}",
        kind.label(),
        indicatif::HumanBytes(input.size),
        input.path.display()
    ));
    Ok(input)
}

/// Copies the staged document to stdout, whole, and removes it. A closed
/// pipe (or any failed write) is an error that says how far it got: the work
/// database is kept, and the same command exports again.
fn to_stdout(staged: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::open(staged)
        .with_context(|| format!("reading the staged document {}", staged.display()))?;
    let size = file.metadata()?.len();
    let mut out = std::io::stdout().lock();
    let copied = std::io::copy(&mut file, &mut out).and_then(|n| out.flush().map(|()| n));
    match copied {
        Ok(_) => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "writing OUTPUT to standard output ({size} bytes): it was closed or failed before the document was written whole (a reader that stopped early?); the work database is kept: the same command writes it again"
                )
            })
        }
    }
    std::fs::remove_file(staged)
        .with_context(|| format!("removing the staged document {}", staged.display()))
}

/// Returns what the allocator keeps of freed memory to the system, between
/// stages, so that each stage's peak stays its own in the harness's resident
/// size (and workers forked after the import do not inherit it). glibc keeps
/// freed pages; other allocators need nothing here.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the OS.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// What [`open_or_create`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opened {
    /// A new work store.
    Fresh,
    /// A work store to continue from.
    Resumed,
    /// The work store of a run that already put OUTPUT in place (and was
    /// stopped before it cleaned up): nothing is to be done again.
    Finished,
}

/// Opens the work database to resume from, or makes a new one.
fn open_or_create(config: &Config, inputs: &Inputs, ui: &Ui) -> Result<(Store, Opened)> {
    if config.paths.db.exists()? && !config.fresh {
        let store = match Store::open(&config.paths.db) {
            Ok(store) => store,
            // --fresh would not help: say only what is wrong.
            Err(e) if e.is::<mixtape::store::NotOurs>() => return Err(e),
            Err(e) => {
                return Err(e.context(format!(
                    "cannot resume; pass --fresh to discard {}",
                    config.paths.db.display()
                )))
            }
        };
        if published_by(&store, config, inputs)? {
            return Ok((store, Opened::Finished));
        }
        let mut why_fresh = None;
        for input in inputs.both() {
            why_fresh = input.changed_since(&store)?;
            // A file edited since is read afresh; an object replaced since
            // is refused, as every read of it during the run would be.
            if let (Some(why), true) = (&why_fresh, mixtape::place::is_object(&input.path)) {
                bail!("{why}; the run does not mix two versions of an input: pass --fresh to start over from the new one");
            }
            if why_fresh.is_some() {
                break;
            }
        }
        match why_fresh {
            None => return Ok((store, Opened::Resumed)),
            // A file edited since is read afresh; an object replaced since
            // is refused, as every read of it during the run would be.
            Some(why) => ui.message(&format!("harness: starting fresh: {why}")),
        }
    }
    let store = Store::create(&config.paths.db)?;
    for input in inputs.both() {
        input.record(&store)?;
    }
    Ok((store, Opened::Fresh))
}

/// Whether `store` is that of a run of this command that has put OUTPUT in
/// place: the store recorded publishing OUTPUT, OUTPUT is there with the
/// recorded fingerprint, CHANGES is the one the store was made from, and so is
/// MIXTAPE, unless MIXTAPE is that very OUTPUT (an in-place run, whose
/// MIXTAPE is now the result).
fn published_by(store: &Store, config: &Config, inputs: &Inputs) -> Result<bool> {
    if config.paths.to_stdout {
        // A document staged for stdout is not in place until it has gone
        // there whole, which no record can tell: export it again.
        return Ok(false);
    }
    let Some((path, print)) = store.published_output()? else {
        return Ok(false);
    };
    if path != config.paths.output_absolute
        || mixtape::place::fingerprint(&config.paths.output)
            .ok()
            .as_deref()
            != Some(print.as_str())
    {
        return Ok(false);
    }
    for input in inputs.both() {
        let is_the_output = input.kind == InputKind::Mixtape && input.fingerprint == print;
        if !is_the_output && input.changed_since(store)?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One run in progress: what every stage needs.
struct Run<'a> {
    config: &'a Config,
    ui: Ui,
    store: Store,
    /// MIXTAPE and CHANGES.
    inputs: Inputs,
    /// Whether this run continues a work database made before.
    resumed: bool,
    times: StageTimes,
    started: Instant,
}

impl Run<'_> {
    /// Runs `stage` unless the store says it is done.
    fn stage(&mut self, stage: Stage) -> Result<()> {
        if !self.store.is_done(stage)? {
            let started = Instant::now();
            match stage {
                Stage::Decompress => self.decompress()?,
                Stage::Import => self.import()?,
                Stage::Plan => self.plan()?,
                Stage::Apply => self.apply()?,
                Stage::Merge => self.merge()?,
                Stage::Export => unreachable!("export ends the run: Run::export"),
            }
            self.times.record(stage, started);
        }
        mixtape::run::interrupt::check()
    }

    /// Every stage before the export, each after checking the run lock;
    /// the exit when `--stop-after` ends the run there.
    fn stages_before_export(&mut self, lock: &mut RunLock) -> Result<Option<Exit>> {
        for stage in Stage::ALL {
            if stage == Stage::Export {
                break;
            }
            lock.keep_held(&mut |what| self.ui.message(&format!("harness: {what}")))?;
            self.stage(stage)?;
            if self.config.stop_after == Some(stage) {
                let exit = self.stopped_after(stage);
                self.report(exit, Some(stage), false)?;
                return Ok(Some(exit));
            }
        }
        Ok(None)
    }

    /// The export, the document to stdout when OUTPUT is `-`, the run report,
    /// and (after a success) the clean-up.
    fn export_and_finish(mut self, mut lock: RunLock) -> Result<Exit> {
        let config = self.config;
        lock.keep_held(&mut |what| self.ui.message(&format!("harness: {what}")))?;
        let (exit, output_written) = self.export()?;
        if config.stages_to_stdout() {
            if output_written {
                to_stdout(&config.paths.output)?;
            } else {
                // --strict failed the run: nothing goes to stdout.
                let _ = std::fs::remove_file(&config.paths.output);
            }
        }
        if output_written {
            mixtape::run::fault::point("output-published");
        }
        self.report(exit, None, output_written)?;
        if exit == Exit::Success {
            return self.clean_up(lock);
        }
        Ok(exit)
    }

    /// After a successful run: removes the work store unless `--keep-db`,
    /// and the run lock.
    fn clean_up(self, lock: RunLock) -> Result<Exit> {
        drop(self.store);
        if !self.config.keep_db {
            self.config.paths.db.remove()?;
        }
        lock.release_and_remove();
        Ok(Exit::Success)
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
            self.config.paths.db.display(),
            done.join(", ")
        ));
        Ok(())
    }

    /// Decompresses the inputs whose kept text is not whole, with a bar each:
    /// compressed bytes read against the file's size, and bytes written.
    fn decompress(&mut self) -> Result<()> {
        let to_do = decompress::pending(&self.inputs, &self.store)?;
        let label = |input: &Input| {
            let format = input
                .compression
                .expect("only compressed inputs are pending");
            format!("{} ({})", input.kind.label(), format.name())
        };
        let bars: Vec<_> = (to_do.iter())
            .map(|input| self.ui.bytes_bar(Stage::Decompress.name(), input.size))
            .collect();
        let got = decompress::stage(&to_do, &self.store, self.threads(), &|i, read, written| {
            bars[i].set(read);
            let out = indicatif::HumanBytes(written);
            bars[i].set_message(format!("{}: {out} out", label(to_do[i])));
        })?;
        for ((input, bar), got) in to_do.iter().zip(&bars).zip(got) {
            bar.finish(&format!(
                "{}: {} into {} ({})",
                label(input),
                indicatif::HumanBytes(got.compressed_bytes),
                indicatif::HumanBytes(got.decompressed_bytes),
                input.text.display()
            ));
        }
        Ok(())
    }

    fn import(&mut self) -> Result<()> {
        let mixtape = &self.inputs.mixtape;
        let bar = self
            .ui
            .bytes_bar(Stage::Import.name(), mixtape.text_size()?);
        let copy = mixtape.is_copied().then(|| import::LocalCopy {
            partial: mixtape
                .partial_text
                .as_deref()
                .expect("a copy has a partial file"),
            kept: &mixtape.text,
        });
        let figures = import::import(
            &self.store,
            mixtape.source(),
            self.threads(),
            copy,
            &mut |b| bar.set(b),
        )
        .map_err(|e| mixtape.explain_positions(e))?;
        // The ids' sort buffers are gone: give their memory back before the
        // workers start (a child's peak RSS counts what it inherits at fork).
        self.store.release_memory()?;
        give_back_freed_memory();
        bar.finish(&format!(
            "{} users, {} playlists, {} songs",
            figures.users, figures.playlists, figures.songs
        ));
        Ok(())
    }

    fn plan(&mut self) -> Result<()> {
        let changes = &self.inputs.changes;
        let size = changes.text_size()?;
        let bar = self.ui.bytes_bar(Stage::Plan.name(), size);
        let planned = plan::plan(
            &changes.text,
            self.config.chunks,
            self.threads(),
            &mut |b| bar.set(b),
        )
        .map_err(|e| changes.explain_positions(e))?;
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
        let pending = chunks.iter().filter(|c| !c.done).count();
        if chunks.len() != self.config.chunks && pending < chunks.len() {
            self.ui.message(&format!(
                "harness: continuing the stored plan of {} chunk(s); {pending} remain",
                chunks.len(),
            ));
        }
        let worker = crate::paths::PathPlan::worker()?;
        self.times.lock = workers::run(
            &worker,
            &self.store,
            &self.config.paths.db,
            self.config.workers,
            &self.ui,
        )?;
        if !self.store.is_done(Stage::Apply)? {
            bail!("the workers exited with chunks left to apply");
        }
        self.store.checkpoint()
    }

    fn merge(&mut self) -> Result<()> {
        let partitions = self.store.meta_number(Key::Partitions)?;
        let bar = self.ui.count_bar(Stage::Merge.name(), partitions);
        merge::merge(&self.store, self.threads(), &mut |done, _| bar.set(done))?;
        give_back_freed_memory();
        bar.finish(&format!("{partitions} partitions"));
        Ok(())
    }

    /// Writes the rejects report and (unless `--strict` fails) OUTPUT, then
    /// the summary; says how the run ends and whether OUTPUT was written.
    fn export(&mut self) -> Result<(Exit, bool)> {
        let started = Instant::now();
        let config = self.config;
        let bar = self.ui.count_bar(Stage::Export.name(), 1);
        let by_reason = self.store.rejects_by_reason()?;
        let rejected: u64 = by_reason.iter().map(|(_, n)| n).sum();
        let strict_failure = config.strict && rejected > 0;
        // Why OUTPUT is not written, if it is not.
        let no_output = match (strict_failure, config.dry_run) {
            (true, _) => Some("--strict"),
            (false, true) => Some("--dry-run"),
            (false, false) => None,
        };
        export::export(
            &self.store,
            &export::Export {
                db: &config.paths.db,
                mixtape: &self.inputs.mixtape.text,
                output: no_output.is_none().then_some(config.paths.output.as_path()),
                output_absolute: &config.paths.output_absolute,
                rejects: &config.paths.rejects,
                threads: self.threads(),
            },
        )?;
        if let Some(path) = &config.paths.applied {
            let changes = &self.inputs.changes.text;
            mixtape::place::write_atomically(path, |out| {
                mixtape::stages::export::applied::write(&self.store, changes, out)
            })?;
        }
        bar.set(1);
        bar.finish(&match no_output {
            Some(why) => format!(
                "rejects to {} (no output: {why})",
                config.paths.rejects.display()
            ),
            None if config.paths.to_stdout => format!(
                "standard output (once the run is done) and {}",
                config.paths.rejects.display()
            ),
            None => format!(
                "{} and {}",
                config.paths.output.display(),
                config.paths.rejects.display()
            ),
        });
        self.times.record(Stage::Export, started);
        self.summarize()?;
        if strict_failure {
            self.ui.final_message(&format!(
                "harness: --strict: {rejected} change(s) rejected, so no output was written; see {}",
                config.paths.rejects.display()
            ));
            return Ok((Exit::Rejected, false));
        }
        if config.dry_run {
            self.ui.final_message(&format!(
                "harness: --dry-run: OUTPUT {} was not written; see {}",
                config.paths.output.display(),
                config.paths.rejects.display()
            ));
            return Ok((Exit::Success, false));
        }
        Ok((Exit::Success, true))
    }

    /// Threads for the stages the harness runs itself (decompress, import,
    /// plan, merge, export): one per worker, at most one per CPU (more only
    /// adds memory).
    fn threads(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.config.workers.min(cpus)
    }

    /// The run's counts, from the store (complete once the merge is done).
    fn counts(&self) -> Result<Counts> {
        let by_reason = self.store.rejects_by_reason()?;
        let changes_read = self.store.meta_number(Key::Changes)?;
        let rejected: u64 = by_reason.iter().map(|(_, n)| n).sum();
        Ok(Counts {
            changes_read,
            applied: changes_read - rejected.min(changes_read),
            rejected,
            rejected_by_reason: report::by_reason(&by_reason),
            warnings: self.store.warnings()?,
        })
    }

    /// The run's one-line summary (and the benchmark's line when asked for).
    fn summarize(&self) -> Result<()> {
        let counts = self.counts()?;
        let nonzero: Vec<String> = (counts.rejected_by_reason.0.iter())
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        let reasons = if nonzero.is_empty() {
            String::new()
        } else {
            format!(" ({})", nonzero.join(", "))
        };
        let warning_text = if counts.warnings > 0 {
            format!(
                "; {} input playlist(s) name a missing owner or song",
                counts.warnings
            )
        } else {
            String::new()
        };
        self.ui.final_message(&format!(
            "harness: {} changes read, {} applied, {} rejected{reasons}{warning_text}; {:.2}s{}",
            counts.changes_read,
            counts.applied,
            counts.rejected,
            self.started.elapsed().as_secs_f64(),
            match self.times.describe() {
                stages if stages.is_empty() => String::new(),
                stages => format!(" ({stages})"),
            }
        ));
        self.bench_line();
        Ok(())
    }

    /// Writes the run report, when `--summary-json` asks for one.
    fn report(&self, exit: Exit, stopped_after: Option<Stage>, output_written: bool) -> Result<()> {
        let Some(target) = &self.config.paths.summary_json else {
            return Ok(());
        };
        let planned = self.store.is_done(Stage::Plan)?;
        let form = planned.then(|| self.store.meta(Key::Form)).transpose()?;
        let Inputs { mixtape, changes } = &self.inputs;
        let config = self.config;
        let report = Report {
            mixtape_version: env!("CARGO_PKG_VERSION"),
            exit_code: exit as u8,
            output_written,
            stopped_after: stopped_after.map(Stage::name),
            inputs: report::Inputs {
                mixtape: input_report(mixtape, None)?,
                changes: input_report(changes, form)?,
            },
            outputs: report::Outputs {
                output: config.paths.output.clone(),
                rejects: config.paths.rejects.clone(),
                work_db: config.paths.db.display(),
                work_db_kept: config.keep_db || exit != Exit::Success || stopped_after.is_some(),
            },
            counts: if self.store.is_done(Stage::Merge)? {
                Some(self.counts()?)
            } else {
                None
            },
            workers: config.workers,
            chunks: planned
                .then(|| self.store.chunks())
                .transpose()?
                .map(|c| c.len()),
            stages: Ordered(
                (Stage::ALL.iter())
                    .filter_map(|s| Some((s.name(), Seconds(self.times.seconds[s.slot()]?))))
                    .collect(),
            ),
            total_seconds: Seconds(self.started.elapsed().as_secs_f64()),
            resumed: self.resumed,
            resumed_from: (Stage::ALL.iter())
                .find(|s| self.resumed && self.times.seconds[s.slot()].is_some())
                .map(|s| s.name()),
            peak_rss_kb: report::peak_rss_kb(),
        };
        report::write(&report, target)
    }

    /// Says where the run stopped, for `--stop-after`.
    fn stopped_after(&self, stage: Stage) -> Exit {
        self.ui.message(&format!(
            "harness: stopped after {}; the work database is kept at {} (run the same command without --stop-after to continue)",
            stage.name(),
            self.config.paths.db.display()
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

/// What the report says about an input; `form` for CHANGES once planned.
fn input_report(input: &Input, form: Option<String>) -> Result<report::InputReport> {
    Ok(report::InputReport {
        path: input.path.clone(),
        bytes: input.size,
        compression: input.compression.map(|c| c.name()),
        text_bytes: input.text_size()?,
        form,
    })
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
        let rss = report::peak_rss_kb();
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
            rss.harness, rss.largest_worker
        ));
        line
    }
}
