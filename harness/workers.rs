//! The apply stage from the harness's side: one `worker` process per pending
//! chunk, watched until all are done or one fails.
//!
//! Each worker reports progress as `progress BYTES CHANGES` lines on its stdout;
//! its stderr is read at the same time by another thread, so a chatty worker can
//! never fill a pipe and block. A worker that exits with an error stops the run:
//! the others are stopped (SIGTERM, then SIGKILL after a grace period), and the
//! error names the chunk, shows the worker's stderr, and gives the command that
//! reproduces it by hand.
//!
//! `std::process::Child` does not kill on drop, so the children live in a
//! [`Children`] guard that does: no worker outlives a harness that returns early.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::progress::{Bar, Ui};

/// How long stopped workers get to finish their transaction before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// The most of a worker's stderr kept for an error message.
const STDERR_KEEP: usize = 64 * 1024;

/// One chunk to apply.
pub struct PendingChunk {
    pub chunk: u64,
    /// Bytes of CHANGES in the chunk, and how many were already applied.
    pub bytes: u64,
    pub done_bytes: u64,
}

enum Event {
    Progress {
        slot: usize,
        bytes: u64,
        changes: u64,
        /// Microseconds the worker held, and waited for, the write lock so far.
        held_us: u64,
        waited_us: u64,
    },
    Stderr {
        slot: usize,
        text: Vec<u8>,
    },
}

/// Running workers; kills whatever still runs when dropped.
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
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The command that runs `chunk` by hand.
pub fn reproduce_command(worker: &Path, db: &Path, chunk: u64) -> String {
    format!(
        "{} --db {} --chunk {chunk} --trace",
        worker.display(),
        db.display()
    )
}

/// Runs one worker per chunk in `pending` and waits for all of them.
pub fn run(worker: &Path, db: &Path, pending: &[PendingChunk], ui: &Ui) -> Result<LockFigures> {
    if !worker.is_file() {
        bail!(
            "worker executable not found at {} (it must sit beside harness)",
            worker.display()
        );
    }
    let total_bytes: u64 = pending.iter().map(|p| p.bytes).sum();
    let total_bar = ui.bytes_bar("apply", total_bytes);
    let bars: Vec<Bar> = pending
        .iter()
        .map(|p| {
            let bar = ui.bytes_bar(&format!("chunk {}", p.chunk), p.bytes);
            bar.set(p.done_bytes);
            bar
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    let mut children = Children(Vec::new());
    for (slot, p) in pending.iter().enumerate() {
        let mut child = Command::new(worker)
            // Their own process group: a terminal's Ctrl-C reaches the harness
            // only, which forwards it (and waits for the current batch).
            .process_group(0)
            .arg("--db")
            .arg(db)
            .arg("--chunk")
            .arg(p.chunk.to_string())
            .arg("--report-progress")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", worker.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        children.0.push(Some(child));
        let progress_tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                if words.next() == Some("progress") {
                    let bytes = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    let mut number = || words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    let (changes, held_us, waited_us) = (number(), number(), number());
                    let _ = progress_tx.send(Event::Progress {
                        slot,
                        bytes,
                        changes,
                        held_us,
                        waited_us,
                    });
                }
            }
        });
        let stderr_tx = tx.clone();
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = stderr_tx.send(Event::Stderr {
                    slot,
                    text: buf[..n].to_vec(),
                });
            }
        });
    }
    drop(tx);
    let mut stderr_of: Vec<Vec<u8>> = vec![Vec::new(); pending.len()];
    let mut done_bytes: Vec<u64> = pending.iter().map(|p| p.done_bytes).collect();
    let mut changes_done = vec![0u64; pending.len()];
    let mut lock_us = vec![(0u64, 0u64); pending.len()];
    let mut running = pending.len();
    while running > 0 {
        if mixtape::interrupt::requested() {
            children.stop_all();
            return Err(mixtape::interrupt::Interrupted.into());
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Progress {
                slot,
                bytes,
                changes,
                held_us,
                waited_us,
            }) => {
                lock_us[slot] = (held_us, waited_us);
                done_bytes[slot] = bytes;
                changes_done[slot] = changes;
                bars[slot].set(bytes);
                let secs = bars[slot].elapsed().as_secs_f64().max(1e-3);
                bars[slot].set_message(format!("{:.0} changes/s", changes as f64 / secs));
                total_bar.set(done_bytes.iter().sum());
            }
            Ok(Event::Stderr { slot, text }) => {
                let kept = &mut stderr_of[slot];
                kept.extend_from_slice(&text);
                if kept.len() > STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
            }
            Err(_) => {}
        }
        for (slot, entry) in children.0.iter_mut().enumerate() {
            let Some(child) = entry else { continue };
            let Some(status) = child.try_wait()? else {
                continue;
            };
            *entry = None;
            running -= 1;
            if status.success() {
                bars[slot].set(pending[slot].bytes);
                bars[slot].finish(&format!("{} changes", changes_done[slot]));
                continue;
            }
            children.stop_all();
            // Collect what the failed worker still had to say.
            let deadline = Instant::now() + Duration::from_millis(500);
            while let Ok(event) =
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if let Event::Stderr { slot: s, text } = event {
                    if s == slot {
                        stderr_of[slot].extend_from_slice(&text);
                    }
                }
            }
            let chunk = pending[slot].chunk;
            let said = String::from_utf8_lossy(&stderr_of[slot]);
            bail!(
                "worker for chunk {chunk} failed ({status}){}\nthe work database is kept; to reproduce by hand:\n  {}",
                if said.trim().is_empty() { String::new() } else { format!(":\n{}", said.trim_end()) },
                reproduce_command(worker, db, chunk)
            );
        }
    }
    // The last progress lines may still be in the pipes: read until every
    // reader thread is done.
    while let Ok(event) = rx.recv_timeout(Duration::from_secs(5)) {
        if let Event::Progress {
            slot,
            held_us,
            waited_us,
            ..
        } = event
        {
            lock_us[slot] = (held_us, waited_us);
        }
    }
    total_bar.set(total_bytes);
    total_bar.finish(&format!("{} chunk(s)", pending.len()));
    Ok(LockFigures {
        held: Duration::from_micros(lock_us.iter().map(|l| l.0).sum()),
        waited: Duration::from_micros(lock_us.iter().map(|l| l.1).sum()),
    })
}

/// How long the workers of a run held, and waited for, the write lock, summed
/// over workers: the serial part of the apply stage, for the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct LockFigures {
    pub held: Duration,
    pub waited: Duration,
}
