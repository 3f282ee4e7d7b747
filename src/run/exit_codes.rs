//! Exit codes of `harness` and `worker`, in one place (docs/GUIDE.md
//! "Errors and exit codes"), and the one conversion from an error to its exit code.

/// How a process ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done. Rejected changes are not an error (unless `--strict`).
    Success = 0,
    /// An input is unreadable or not valid JSON, an input document is invalid, a
    /// worker failed, the disk is full: anything that stops the run.
    Failure = 1,
    /// Bad command line (clap exits with this code itself).
    Usage = 2,
    /// `--strict` and at least one change was rejected; no OUTPUT was written.
    Rejected = 3,
    /// Interrupted by Ctrl-C or SIGTERM; the work database is kept for a resume.
    Interrupted = 130,
}

impl Exit {
    /// The exit code for a run that failed with `error`: the error's type
    /// decides ([`crate::run::interrupt::Interrupted`] is 130), never its text.
    pub fn of_error(error: &anyhow::Error) -> Exit {
        if crate::run::interrupt::is_interrupted(error) {
            Exit::Interrupted
        } else if error.chain().any(|cause| cause.is::<UsageError>()) {
            Exit::Usage
        } else {
            Exit::Failure
        }
    }
}

/// A command line that clap accepts but the run refuses before any work: two
/// arguments that name the same file, an argument we cannot take yet. Exits 2,
/// as clap's own usage errors do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_by_type() {
        assert_eq!(Exit::of_error(&anyhow::anyhow!("x")), Exit::Failure);
        let interrupted =
            anyhow::Error::new(crate::run::interrupt::Interrupted).context("applying");
        assert_eq!(Exit::of_error(&interrupted), Exit::Interrupted);
        assert_eq!(Exit::Interrupted as u8, 130);
        let usage = anyhow::Error::new(UsageError("same file".into())).context("checking paths");
        assert_eq!(Exit::of_error(&usage), Exit::Usage);
    }
}
