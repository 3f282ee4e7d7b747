//! Tasks on a few threads: the one small pool the harness's own stages share
//! (merge partitions, export pieces).
//!
//! Each thread makes its own state first (a database connection, say: they
//! cannot be shared between threads), then takes task numbers in turn until
//! none is left, so a slow task does not hold up the others. The first error
//! ends the run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Result};

/// How often `poll` is called while the threads work.
const POLL: Duration = Duration::from_millis(20);

/// Runs tasks `0..count` on up to `threads` threads. A thread makes its state
/// with `init`, then calls `task(state, i)`; `poll` is called on this thread
/// while they work (to move a progress bar). After the first error no thread
/// starts another task (tasks already running finish), and that error (the
/// first of the threads' errors, in thread order) is returned.
pub fn run_tasks<S>(
    count: usize,
    threads: usize,
    init: impl Fn() -> Result<S> + Sync,
    task: impl Fn(&mut S, usize) -> Result<()> + Sync,
    poll: &mut dyn FnMut(),
) -> Result<()> {
    let next = AtomicUsize::new(0);
    // Set by the first thread that fails: the others take no new task.
    let failed = AtomicBool::new(false);
    let (init, task, next, failed) = (&init, &task, &next, &failed);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.clamp(1, count.max(1)))
            .map(|_| {
                scope.spawn(move || -> Result<()> {
                    let worked = (|| {
                        let mut state = init()?;
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count {
                                break;
                            }
                            task(&mut state, i)?;
                        }
                        Ok(())
                    })();
                    if worked.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    worked
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            poll();
            std::thread::sleep(POLL);
        }
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow!("a worker thread panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once_and_errors_stop_the_run() {
        let sum = AtomicU64::new(0);
        let inits = AtomicU64::new(0);
        run_tasks(
            100,
            3,
            || Ok(inits.fetch_add(1, Ordering::Relaxed)),
            |_, i| {
                sum.fetch_add(i as u64, Ordering::Relaxed);
                Ok(())
            },
            &mut || {},
        )
        .unwrap();
        assert_eq!(sum.into_inner(), 4950);
        assert_eq!(inits.into_inner(), 3);
        let failed = run_tasks(
            10,
            2,
            || Ok(()),
            |_, i| {
                anyhow::ensure!(i != 7, "seven");
                Ok(())
            },
            &mut || {},
        );
        assert_eq!(failed.unwrap_err().to_string(), "seven");
        // One thread: nothing after the failing task runs.
        let ran = AtomicU64::new(0);
        let failed = run_tasks(
            100,
            1,
            || Ok(()),
            |_, i| {
                ran.fetch_add(1, Ordering::Relaxed);
                anyhow::ensure!(i != 3, "three");
                Ok(())
            },
            &mut || {},
        );
        assert!(failed.is_err());
        assert_eq!(ran.into_inner(), 4, "tasks ran after the failure");
        // Two threads: the other stops taking tasks soon after.
        let ran = AtomicU64::new(0);
        let failed = run_tasks(
            10_000,
            2,
            || Ok(()),
            |_, i| {
                ran.fetch_add(1, Ordering::Relaxed);
                anyhow::ensure!(i != 0, "zero");
                std::thread::sleep(std::time::Duration::from_micros(50));
                Ok(())
            },
            &mut || {},
        );
        assert!(failed.is_err());
        assert!(ran.into_inner() < 1000, "the other thread went on");
    }
}
