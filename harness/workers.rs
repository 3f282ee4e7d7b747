//! The apply stage from the harness's side: up to N `worker --join` processes,
//! each claiming chunks (under a lease) until every chunk of the plan is done,
//! watched until all are done or one fails. Workers started elsewhere by hand
//! (`worker --join` on the same store) take chunks the same way; the harness
//! only needs every chunk done, whoever did it.
//!
//! Three jobs, kept apart:
//!
//! - **spawning** ([`WorkerCommand`], [`spawn`]): the worker's command line is
//!   built once, and used both to start it and to print "to reproduce by hand";
//!   a reader thread per pipe turns what it says into [`Event`]s;
//! - **watching** ([`Watch`]): progress reports ([`mixtape::run::protocol`], one when
//!   a worker takes a chunk and one per committed batch) move each worker's
//!   bar; the total bar reads the store's chunk table twice a second, so it
//!   counts chunks applied by any worker; stderr is kept for an error message.
//!   Both pipes are read at once, so a chatty worker can never fill one and block;
//! - **failing** ([`Watch::failure`]): a worker that exits with an error, or
//!   sends a line that is not a progress report, stops the run: the others are
//!   stopped (SIGTERM, then SIGKILL after a grace period), and the error names
//!   chunk it was on, shows the worker's stderr, and gives the command that
//!   reproduces it.
//!
//! `std::process::Child` does not kill on drop, so the children live in a
//! [`Children`] guard that does: no worker outlives a harness that returns early.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use mixtape::run::protocol::Progress;
use mixtape::stages::Stage;
use mixtape::store::{ChunkRow, Location, Store};

use crate::progress::{Bar, Ui};

/// How long stopped workers get to finish their transaction before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// The most of a worker's stderr kept for an error message.
const STDERR_KEEP: usize = 64 * 1024;

/// How often the harness looks at its children between events.
const POLL: Duration = Duration::from_millis(50);

/// How often the total bar reads the store's chunk table.
const TOTAL_EVERY: Duration = Duration::from_millis(500);

/// How long the workers of a run held, and waited for, the write lock, summed
/// over workers: the serial part of the apply stage, for the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct LockFigures {
    pub held: Duration,
    pub waited: Duration,
}

/// What a worker's pipes say, tagged with the worker's slot.
enum Event {
    Progress { slot: usize, progress: Progress },
    Malformed { slot: usize, error: String },
    Stderr { slot: usize, text: Vec<u8> },
}

/// The command line of the harness's workers, built once.
pub struct WorkerCommand {
    program: std::path::PathBuf,
    /// The store as a command line names it: never with a password.
    db: OsString,
    /// A server store's password, handed over in the environment.
    password: Option<String>,
}

impl WorkerCommand {
    pub fn new(worker: &Path, db: &Location) -> WorkerCommand {
        WorkerCommand {
            program: worker.to_path_buf(),
            db: safe_argument(db.argument()),
            password: db.password().map(str::to_string),
        }
    }

    /// The command the harness runs: a joined worker, progress on stdout.
    fn for_harness(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        cmd.arg("--db")
            .arg(&self.db)
            .arg("--join")
            .arg("--report-progress");
        cmd
    }

    /// The command a person runs to see chunk `chunk` change by change (or,
    /// when the worker failed before taking one, to join as it did).
    pub fn by_hand(&self, chunk: Option<u64>) -> String {
        let what = match chunk {
            Some(k) => format!("--chunk {k}"),
            None => "--join".to_string(),
        };
        format!(
            "{} --db {} {what} --trace",
            shell_quoted(&self.program.to_string_lossy()),
            shell_quoted(&self.db.to_string_lossy())
        )
    }
}

/// A path argument that no command line reads as a flag: a relative path
/// that starts with `-` gets `./` in front (the same file).
fn safe_argument(argument: OsString) -> OsString {
    if argument.as_encoded_bytes().starts_with(b"-") {
        let mut safe = OsString::from("./");
        safe.push(argument);
        safe
    } else {
        argument
    }
}

/// `text` as a POSIX shell reads it back: unchanged when it holds only
/// characters no shell treats specially, else in single quotes (a single
/// quote inside written `'\''`).
fn shell_quoted(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Running workers, by slot; kills whatever still runs when dropped.
struct Children(Vec<Option<Child>>);

impl Children {
    fn stop_all(&mut self) {
        for child in self.0.iter().flatten() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + GRACE;
        for slot in &mut self.0 {
            if let Some(child) = slot {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                *slot = None;
            }
        }
    }

    fn running(&self) -> usize {
        self.0.iter().flatten().count()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the worker of `command` in `slot`, with a reader thread per pipe.
fn spawn(command: &WorkerCommand, slot: usize, events: &Sender<Event>) -> Result<Child> {
    let mut child = command
        .for_harness()
        // Their own process group: a terminal's Ctrl-C reaches the harness
        // only, which forwards it (and waits for the current batch).
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", command.program.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let tx = events.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event = match Progress::parse(&line) {
                Ok(progress) => Event::Progress { slot, progress },
                Err(e) => Event::Malformed {
                    slot,
                    error: e.to_string(),
                },
            };
            let _ = tx.send(event);
        }
    });
    let tx = events.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = buf[..n].to_vec();
            let _ = tx.send(Event::Stderr { slot, text });
        }
    });
    Ok(child)
}

/// Runs up to `workers` joined workers on the plan in `store` (at `db`) and
/// waits until every one has exited: they exit when every chunk is done.
pub fn run(
    worker: &Path,
    store: &Store,
    db: &Location,
    workers: usize,
    ui: &Ui,
) -> Result<LockFigures> {
    if !worker.is_file() {
        bail!(
            "worker executable not found at {} (it must sit beside harness)",
            worker.display()
        );
    }
    let chunks = store.chunks()?;
    let pending = chunks.iter().filter(|c| !c.done).count();
    let command = WorkerCommand::new(worker, db);
    let mut watch = Watch::new(store, &chunks, workers.min(pending), ui);
    let (tx, rx) = mpsc::channel();
    let mut children = Children(Vec::new());
    for slot in 0..workers.min(pending) {
        children.0.push(Some(spawn(&command, slot, &tx)?));
    }
    drop(tx);
    while children.running() > 0 {
        if mixtape::run::interrupt::requested() {
            children.stop_all();
            return Err(mixtape::run::interrupt::Interrupted.into());
        }
        if let Ok(event) = rx.recv_timeout(POLL) {
            if let Some(slot) = watch.on_event(event) {
                children.stop_all();
                return Err(watch.failure(slot, &command, &rx, None));
            }
        }
        watch.refresh_total()?;
        for (slot, entry) in children.0.iter_mut().enumerate() {
            let Some(child) = entry else { continue };
            let Some(status) = child.try_wait()? else {
                continue;
            };
            *entry = None;
            if status.success() {
                watch.finished(slot);
            } else {
                children.stop_all();
                return Err(watch.failure(slot, &command, &rx, Some(status)));
            }
        }
    }
    // The last progress lines may still be in the pipes: read until every
    // reader thread is done.
    while let Ok(event) = rx.recv_timeout(Duration::from_secs(5)) {
        if let Some(slot) = watch.on_event(event) {
            return Err(watch.failure(slot, &command, &rx, None));
        }
    }
    watch.done()
}

/// What the harness knows of its workers while they run: their bars, their
/// last progress report per chunk, and what they said on stderr.
struct Watch<'a> {
    store: &'a Store,
    total_bar: Bar,
    total_read: Instant,
    bars: Vec<Bar>,
    /// The chunk each worker is on (the last it reported).
    on_chunk: Vec<Option<u64>>,
    /// The last report of each worker about each chunk: the lock figures sum these.
    last: HashMap<(usize, u64), Progress>,
    stderr_of: Vec<Vec<u8>>,
    /// The first malformed line, which fails its worker.
    malformed: Option<String>,
}

impl<'a> Watch<'a> {
    fn new(store: &'a Store, chunks: &[ChunkRow], workers: usize, ui: &Ui) -> Watch<'a> {
        let total_bytes = chunks.iter().map(|c| c.end - c.start).sum();
        let total_bar = ui.bytes_bar(Stage::Apply.name(), total_bytes);
        let watch = Watch {
            store,
            total_bar,
            total_read: Instant::now(),
            bars: (0..workers)
                .map(|slot| ui.bytes_bar(&format!("worker {slot}"), 0))
                .collect(),
            on_chunk: vec![None; workers],
            last: HashMap::new(),
            stderr_of: vec![Vec::new(); workers],
            malformed: None,
        };
        watch.show_total(chunks);
        watch
    }

    /// Moves the total bar to what the store says every chunk has committed.
    fn show_total(&self, chunks: &[ChunkRow]) {
        self.total_bar
            .set(chunks.iter().map(|c| c.next_offset - c.start).sum());
        let done = chunks.iter().filter(|c| c.done).count();
        self.total_bar
            .set_message(format!("{done}/{} chunks", chunks.len()));
    }

    /// Reads the chunk table again when it is time to.
    fn refresh_total(&mut self) -> Result<()> {
        if self.total_read.elapsed() >= TOTAL_EVERY {
            self.total_read = Instant::now();
            self.show_total(&self.store.chunks()?);
        }
        Ok(())
    }

    /// Takes in one event; returns the slot of a worker that must fail.
    fn on_event(&mut self, event: Event) -> Option<usize> {
        match event {
            Event::Progress { slot, progress } => {
                let bar = &self.bars[slot];
                if self.on_chunk[slot] != Some(progress.chunk) {
                    self.on_chunk[slot] = Some(progress.chunk);
                    bar.restart(progress.bytes_total);
                }
                self.last.insert((slot, progress.chunk), progress);
                bar.set(progress.bytes_done);
                let secs = bar.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "chunk {}: {:.0} changes/s",
                    progress.chunk,
                    progress.changes as f64 / secs
                ));
                None
            }
            Event::Stderr { slot, text } => {
                let kept = &mut self.stderr_of[slot];
                kept.extend_from_slice(&text);
                if kept.len() > STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
                None
            }
            Event::Malformed { slot, error } => {
                self.malformed.get_or_insert(error);
                Some(slot)
            }
        }
    }

    fn finished(&mut self, slot: usize) {
        let (chunks, changes) = self
            .last
            .iter()
            .filter(|((s, _), _)| *s == slot)
            .fold((0, 0), |(k, n), (_, p)| (k + 1, n + p.changes));
        self.bars[slot].finish(&format!("{chunks} chunk(s), {changes} changes"));
    }

    /// The error for the worker in `slot`, once every worker is stopped: what it
    /// said, and how to reproduce it by hand.
    fn failure(
        &mut self,
        slot: usize,
        command: &WorkerCommand,
        events: &Receiver<Event>,
        status: Option<ExitStatus>,
    ) -> anyhow::Error {
        // Collect what the failed worker still had to say: its stderr, and
        // its progress lines too, which name the chunk it took (on a loaded
        // machine its exit can be seen before the reader thread has passed
        // them on, and the message then said "before it took a chunk").
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Ok(event) =
            events.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            match event {
                Event::Stderr { slot: s, text } if s == slot => {
                    self.stderr_of[slot].extend_from_slice(&text);
                }
                progress @ Event::Progress { .. } => {
                    self.on_event(progress);
                }
                _ => {}
            }
        }
        let why = match (status, &self.malformed) {
            (Some(status), _) => format!("failed ({status})"),
            (None, Some(malformed)) => format!("failed: {malformed}"),
            (None, None) => "failed".to_string(),
        };
        let said = String::from_utf8_lossy(&self.stderr_of[slot]);
        let chunk = self.on_chunk[slot];
        anyhow!(
            "worker {}{why}{}\nthe work database is kept; to reproduce by hand:\n  {}",
            match chunk {
                Some(k) => format!("for chunk {k} "),
                None => format!("{slot} (before it took a chunk) "),
            },
            if said.trim().is_empty() {
                String::new()
            } else {
                format!(":\n{}", said.trim_end())
            },
            command.by_hand(chunk)
        )
    }

    /// Finishes the total bar; the lock figures of every worker.
    fn done(self) -> Result<LockFigures> {
        let chunks = self.store.chunks()?;
        self.show_total(&chunks);
        self.total_bar.finish(&format!("{} chunk(s)", chunks.len()));
        Ok(LockFigures {
            held: self.last.values().map(|p| p.lock_held).sum(),
            waited: self.last.values().map(|p| p.lock_wait).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reproduce_command_is_the_spawned_one_plus_trace() {
        let db = Location::File("/tmp/o.work.db".into());
        let cmd = WorkerCommand::new(Path::new("/bin/worker"), &db);
        assert_eq!(
            cmd.by_hand(Some(3)),
            "/bin/worker --db /tmp/o.work.db --chunk 3 --trace"
        );
        assert_eq!(
            cmd.by_hand(None),
            "/bin/worker --db /tmp/o.work.db --join --trace"
        );
        let odd = WorkerCommand::new(
            Path::new("/opt/my tools/worker"),
            &Location::File("-it's.work.db".into()),
        );
        assert_eq!(
            odd.by_hand(Some(0)),
            "'/opt/my tools/worker' --db './-it'\\''s.work.db' --chunk 0 --trace"
        );
        let spawned = cmd.for_harness();
        let args: Vec<_> = spawned.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            ["--db", "/tmp/o.work.db", "--join", "--report-progress"]
        );
    }
}
