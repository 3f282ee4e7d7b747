//! Ctrl-C and SIGTERM: stop at the next safe point, keep what is committed.
//!
//! [`install`] sets a handler for SIGINT and SIGTERM that only raises a flag,
//! and resets itself, so a *second* signal has its default effect and kills the
//! process at once. Long loops call [`check`] at points where stopping loses
//! nothing committed (between elements, batches, partitions); it returns the
//! [`Interrupted`] error, which the binaries turn into exit code 130.
//!
//! The harness, on the first signal, also forwards SIGTERM to its workers and
//! gives them a moment to commit their current batch (see `harness/workers.rs`).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    // Only async-signal-safe work here: one atomic store.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM (see module docs). Fails only
/// if the system refuses the handler, and then nothing could stop the run
/// safely: the binaries refuse to start.
pub fn install() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .map_err(|e| anyhow::anyhow!("installing the {signal} handler: {e}"))?;
    }
    Ok(())
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The error of a run stopped by a signal; its type (not its text) makes the
/// exit code 130 ([`crate::run::exit_codes::Exit::of_error`]).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// `Err(Interrupted)` once a stop was requested.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}

/// Whether `error` (or its cause) is an interruption.
pub fn is_interrupted(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<Interrupted>())
}
