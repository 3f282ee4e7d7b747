//! The apply stage from the harness's side: one `worker` process per pending
//! chunk, watched until all are done or one fails.
//!
//! Three jobs, kept apart:
//!
//! - **spawning** ([`WorkerCommand`], [`spawn`]): the worker's command line is
//!   built once, and used both to start it and to print "to reproduce by hand";
//!   a reader thread per pipe turns what it says into [`Event`]s;
//! - **watching** ([`Watch`]): progress reports ([`mixtape::protocol`], one per
//!   committed batch) move the bars; stderr is kept for an error message. Both
//!   pipes are read at once, so a chatty worker can never fill one and block;
//! - **failing** ([`Watch::failure`]): a worker that exits with an error, or
//!   sends a line that is not a progress report, stops the run: the others are
//!   stopped (SIGTERM, then SIGKILL after a grace period), and the error names
//!   the chunk, shows the worker's stderr, and gives the command that
//!   reproduces it.
//!
//! `std::process::Child` does not kill on drop, so the children live in a
//! [`Children`] guard that does: no worker outlives a harness that returns early.

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

use mixtape::protocol::Progress;

use crate::progress::{Bar, Ui};

/// How long stopped workers get to finish their transaction before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// The most of a worker's stderr kept for an error message.
const STDERR_KEEP: usize = 64 * 1024;

/// How often the harness looks at its children between events.
const POLL: Duration = Duration::from_millis(50);

/// One chunk to apply.
pub struct PendingChunk {
    pub chunk: u64,
    /// Bytes of CHANGES in the chunk, and how many were already applied.
    pub bytes: u64,
    pub done_bytes: u64,
}

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

/// The command line of the worker for one chunk, built once.
pub struct WorkerCommand {
    program: std::path::PathBuf,
    args: Vec<OsString>,
}

impl WorkerCommand {
    pub fn new(worker: &Path, db: &Path, chunk: u64) -> WorkerCommand {
        WorkerCommand {
            program: worker.to_path_buf(),
            args: vec![
                "--db".into(),
                db.into(),
                "--chunk".into(),
                chunk.to_string().into(),
            ],
        }
    }

    /// The command the harness runs: progress reports on stdout.
    fn for_harness(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).arg("--report-progress");
        cmd
    }

    /// The command a person runs to see the chunk change by change.
    pub fn by_hand(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line.push_str(" --trace");
        line
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

/// Runs one worker per chunk in `pending` and waits for all of them.
pub fn run(worker: &Path, db: &Path, pending: &[PendingChunk], ui: &Ui) -> Result<LockFigures> {
    if !worker.is_file() {
        bail!(
            "worker executable not found at {} (it must sit beside harness)",
            worker.display()
        );
    }
    let commands: Vec<WorkerCommand> = pending
        .iter()
        .map(|p| WorkerCommand::new(worker, db, p.chunk))
        .collect();
    let mut watch = Watch::new(pending, ui);
    let (tx, rx) = mpsc::channel();
    let mut children = Children(Vec::new());
    for (slot, command) in commands.iter().enumerate() {
        children.0.push(Some(spawn(command, slot, &tx)?));
    }
    drop(tx);
    while children.running() > 0 {
        if mixtape::interrupt::requested() {
            children.stop_all();
            return Err(mixtape::interrupt::Interrupted.into());
        }
        if let Ok(event) = rx.recv_timeout(POLL) {
            if let Some(slot) = watch.on_event(event) {
                children.stop_all();
                return Err(watch.failure(slot, &commands[slot], &rx, None));
            }
        }
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
                return Err(watch.failure(slot, &commands[slot], &rx, Some(status)));
            }
        }
    }
    // The last progress lines may still be in the pipes: read until every
    // reader thread is done.
    while let Ok(event) = rx.recv_timeout(Duration::from_secs(5)) {
        if let Some(slot) = watch.on_event(event) {
            return Err(watch.failure(slot, &commands[slot], &rx, None));
        }
    }
    Ok(watch.done())
}

/// What the harness knows of its workers while they run: their bars, their
/// last progress report, and what they said on stderr.
struct Watch<'a> {
    pending: &'a [PendingChunk],
    total_bar: Bar,
    bars: Vec<Bar>,
    last: Vec<Progress>,
    stderr_of: Vec<Vec<u8>>,
    /// The first malformed line, which fails its worker.
    malformed: Option<String>,
}

impl<'a> Watch<'a> {
    fn new(pending: &'a [PendingChunk], ui: &Ui) -> Watch<'a> {
        let total_bytes = pending.iter().map(|p| p.bytes).sum();
        let total_bar = ui.bytes_bar("apply", total_bytes);
        let bars = pending
            .iter()
            .map(|p| {
                let bar = ui.bytes_bar(&format!("chunk {}", p.chunk), p.bytes);
                bar.set(p.done_bytes);
                bar
            })
            .collect();
        Watch {
            pending,
            total_bar,
            bars,
            last: pending
                .iter()
                .map(|p| Progress {
                    bytes_done: p.done_bytes,
                    ..Progress::default()
                })
                .collect(),
            stderr_of: vec![Vec::new(); pending.len()],
            malformed: None,
        }
    }

    /// Takes in one event; returns the slot of a worker that must fail.
    fn on_event(&mut self, event: Event) -> Option<usize> {
        match event {
            Event::Progress { slot, progress } => {
                self.last[slot] = progress;
                let bar = &self.bars[slot];
                bar.set(progress.bytes_done);
                let secs = bar.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!("{:.0} changes/s", progress.changes as f64 / secs));
                self.total_bar
                    .set(self.last.iter().map(|p| p.bytes_done).sum());
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
        let bar = &self.bars[slot];
        bar.set(self.pending[slot].bytes);
        bar.finish(&format!("{} changes", self.last[slot].changes));
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
        // Collect what the failed worker still had to say.
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Ok(event) =
            events.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Event::Stderr { slot: s, text } = event {
                if s == slot {
                    self.stderr_of[slot].extend_from_slice(&text);
                }
            }
        }
        let why = match (status, &self.malformed) {
            (Some(status), _) => format!("failed ({status})"),
            (None, Some(malformed)) => format!("failed: {malformed}"),
            (None, None) => "failed".to_string(),
        };
        let said = String::from_utf8_lossy(&self.stderr_of[slot]);
        anyhow!(
            "worker for chunk {} {why}{}\nthe work database is kept; to reproduce by hand:\n  {}",
            self.pending[slot].chunk,
            if said.trim().is_empty() {
                String::new()
            } else {
                format!(":\n{}", said.trim_end())
            },
            command.by_hand()
        )
    }

    /// Finishes the total bar; the lock figures of every worker.
    fn done(self) -> LockFigures {
        let total = self.pending.iter().map(|p| p.bytes).sum();
        self.total_bar.set(total);
        self.total_bar
            .finish(&format!("{} chunk(s)", self.pending.len()));
        LockFigures {
            held: self.last.iter().map(|p| p.lock_held).sum(),
            waited: self.last.iter().map(|p| p.lock_wait).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reproduce_command_is_the_spawned_one_plus_trace() {
        let cmd = WorkerCommand::new(Path::new("/bin/worker"), Path::new("/tmp/o.work.db"), 3);
        assert_eq!(
            cmd.by_hand(),
            "/bin/worker --db /tmp/o.work.db --chunk 3 --trace"
        );
        let spawned = cmd.for_harness();
        let args: Vec<_> = spawned.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "--db",
                "/tmp/o.work.db",
                "--chunk",
                "3",
                "--report-progress"
            ]
        );
    }
}
