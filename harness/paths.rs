//! The run's path plan: every path a run reads or writes, resolved from the
//! command line in one place, compared and checked before any work
//! (docs/GUIDE.md "What is never lost"), and handed to the stages as one
//! value ([`PathPlan`]). No stage derives a path of its own: the store's
//! companions come from its [`WorkFiles`], which the plan holds.
//!
//! A run reads MIXTAPE and CHANGES and writes OUTPUT, the rejects report, the
//! run report and the work database with its companions (WAL, shared memory,
//! lock, id indexes, kept decompressed texts). Each of these can be named by
//! the user, directly or through a default derived from another, so two of them
//! can turn out to be one file: `--rejects out.json` for OUTPUT `out.json`,
//! `--db mixtape.json`, OUTPUT = CHANGES. Every such pair would destroy a file
//! (a rename over it, a clean-up that deletes it), so the run refuses them,
//! exit 2, naming both arguments.
//!
//! Sameness is decided as the open would see it: an existing file by device
//! and inode (hard links and symlinks included), a file yet to be made by its
//! absolute path once its directory and any symlink at its own name are
//! followed. The one pair allowed to be the same file is OUTPUT = MIXTAPE (an
//! in-place run; see the pipeline's publication record). MIXTAPE = CHANGES is
//! allowed too: both are only read.
//!
//! An object (`s3://BUCKET/KEY`, [`mixtape::place`]) is the same as another
//! when their URLs are, and OUTPUT = MIXTAPE is refused for objects: the run
//! reads a pinned input to the end, so it never replaces one. With OUTPUT in
//! a bucket, the files this host keeps for itself (the default SQLite work
//! database, id indexes) are named after OUTPUT's key in the current
//! directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mixtape::run::exit_codes::UsageError;

use mixtape::place;
use mixtape::run::paths::with_suffix;
use mixtape::store::{Location, WorkFiles};

use crate::report::{self, ReportTarget};

/// With OUTPUT `-`, the run's files are named as if OUTPUT were this file of
/// the current directory: `stdout.json.work.db`, `stdout.json.rejects.jsonl`.
const STDOUT_BASE: &str = "stdout.json";
/// ... and the document is staged here before it goes to stdout.
pub const STDOUT_STAGING: &str = "stdout.json.work.staged";

/// Every file of the run, resolved once.
#[derive(Clone, Debug)]
pub struct PathPlan {
    /// MIXTAPE and CHANGES as given (`-`: standard input).
    pub mixtape: PathBuf,
    pub changes: PathBuf,
    /// The file the export writes OUTPUT to: OUTPUT itself, or, when OUTPUT
    /// is `-`, a private staging file that is copied to stdout once the run
    /// has succeeded ([`STDOUT_STAGING`]).
    pub output: PathBuf,
    /// `output` made absolute (symlinks not followed: the rename replaces
    /// the name), as the publication record names it.
    pub output_absolute: PathBuf,
    /// OUTPUT is `-`.
    pub to_stdout: bool,
    pub rejects: PathBuf,
    pub applied: Option<PathBuf>,
    pub summary_json: Option<ReportTarget>,
    /// The work store, and its files on this host.
    pub db: Location,
    pub work_files: WorkFiles,
}

/// The paths as the user typed them, before defaults.
pub struct Given {
    pub mixtape: PathBuf,
    pub changes: PathBuf,
    pub output: PathBuf,
    pub db: Option<std::ffi::OsString>,
    pub rejects: Option<PathBuf>,
    pub applied: Option<PathBuf>,
    pub summary_json: Option<PathBuf>,
}

impl PathPlan {
    /// Resolves what the user gave into the run's paths (the defaults derive
    /// from OUTPUT) and checks them; see the module docs.
    pub fn resolve(given: Given) -> Result<PathPlan> {
        let to_stdout = given.output.as_os_str() == "-";
        // What the defaults of the other files derive from.
        let output = if to_stdout {
            PathBuf::from(STDOUT_BASE)
        } else {
            given.output
        };
        if to_stdout && given.summary_json.as_deref() == Some(Path::new("-")) {
            return Err(UsageError(
                "OUTPUT `-` and --summary-json `-` would both write to standard output; give the run report a file".into(),
            )
            .into());
        }
        // OUTPUT in a bucket: this host's own files are named as if OUTPUT
        // were the file of that name in the current directory.
        let local_output = if place::is_object(&output) {
            PathBuf::from(output.file_name().unwrap_or(output.as_os_str()))
        } else {
            output.clone()
        };
        let db = match &given.db {
            Some(argument) if place::is_object(Path::new(argument)) => {
                return Err(UsageError(format!(
                    "--db {}: the work store is a file or a postgresql:// URL, not an object",
                    Path::new(argument).display()
                ))
                .into())
            }
            // A server store's files (kept decompressed inputs, id indexes)
            // go beside OUTPUT; those of them that only this host uses, in
            // the current directory when OUTPUT is an object (WorkFiles::of).
            Some(argument) => Location::from_argument(argument, &with_suffix(&output, ".work"))?,
            None => Location::File(with_suffix(&local_output, ".work.db")),
        };
        let rejects = (given.rejects).unwrap_or_else(|| with_suffix(&output, ".rejects.jsonl"));
        // The file the export writes: OUTPUT, or the staging file for stdout.
        let output = if to_stdout {
            PathBuf::from(STDOUT_STAGING)
        } else {
            output
        };
        let plan = PathPlan {
            work_files: db.work_files(),
            db,
            rejects,
            mixtape: given.mixtape,
            changes: given.changes,
            output_absolute: if place::is_object(&output) {
                output.clone()
            } else {
                std::path::absolute(&output)
                    .with_context(|| format!("resolving {}", output.display()))?
            },
            output,
            to_stdout,
            applied: given.applied,
            summary_json: given.summary_json.map(ReportTarget::from_argument),
        };
        check(&plan)?;
        Ok(plan)
    }

    /// The reports a run writes beside OUTPUT: the rejects report, and the
    /// applied report and the run report when asked for.
    pub fn reports(&self) -> Vec<(&'static str, &Path)> {
        let mut reports = vec![("rejects report", self.rejects.as_path())];
        reports.extend(self.applied.as_deref().map(|path| ("applied report", path)));
        reports.extend(report::file_of(&self.summary_json).map(|path| ("run report", path)));
        reports
    }

    /// Before any work: a run that cannot write its results must not spend
    /// an hour finding out, nor leave a work database behind. `to_stdout`:
    /// the document is staged for standard output; `dry_run`: OUTPUT is not
    /// written at all.
    pub fn check_writable(&self, to_stdout: bool, dry_run: bool) -> Result<()> {
        if to_stdout {
            // The document is staged in a private file first (an existing
            // file keeps its mode when the export replaces it).
            mixtape::run::private_file::open_or_create(&self.output)?;
        } else if !dry_run {
            place::check_writable("OUTPUT", &self.output)?;
        }
        for (what, path) in self.reports() {
            place::check_writable(what, path)?;
        }
        if let Some(file) = self.db.file() {
            place::check_writable("work database", file)?;
        }
        Ok(())
    }

    /// Removes what a killed run left of OUTPUT's and the reports'
    /// temporary files, or aborts the uploads it left of those in a bucket
    /// (only this run, holding the lock, may).
    pub fn remove_stale_temporaries(&self) -> Result<()> {
        place::remove_stale_temporaries(&self.output)?;
        for (_, path) in self.reports() {
            place::remove_stale_temporaries(path)?;
        }
        Ok(())
    }

    /// The `worker` executable: beside this `harness`.
    pub fn worker() -> Result<PathBuf> {
        Ok(std::env::current_exe()
            .context("finding the harness executable")?
            .with_file_name("worker"))
    }
}

/// One path of the run, and which argument gave it.
struct Named {
    /// How messages name it: `OUTPUT out.json`, `the rejects report (--rejects r)`.
    what: String,
    role: Role,
    path: PathBuf,
    /// Said after a collision, for a path the user did not name directly.
    hint: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Mixtape,
    Changes,
    Output,
    Written,
}

/// How the open would find a path.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    /// An existing file.
    Inode { dev: u64, ino: u64 },
    /// A file that does not exist yet, where it would be created.
    New(PathBuf),
    /// An object: its URL.
    Object(PathBuf),
}

/// Refuses a command line whose paths collide, or that uses `-` for anything
/// but one input and OUTPUT; see the module docs.
fn check(plan: &PathPlan) -> Result<()> {
    let given = [
        ("MIXTAPE", Role::Mixtape, &plan.mixtape, ""),
        ("CHANGES", Role::Changes, &plan.changes, ""),
        ("OUTPUT", Role::Output, &plan.output, ""),
        (
            "the rejects report",
            Role::Written,
            &plan.rejects,
            " (--rejects; by default OUTPUT with .rejects.jsonl appended)",
        ),
    ];
    let mut named: Vec<Named> = (given.into_iter())
        .map(|(label, role, path, hint)| Named {
            what: format!("{label} {}", path.display()),
            role,
            path: path.clone(),
            hint,
        })
        .collect();
    if let Some(path) = &plan.applied {
        named.push(Named {
            what: format!("the applied report (--applied {})", path.display()),
            role: Role::Written,
            path: path.clone(),
            hint: "",
        });
    }
    if let Some(path) = report::file_of(&plan.summary_json) {
        named.push(Named {
            what: format!("the run report (--summary-json {})", path.display()),
            role: Role::Written,
            path: path.to_path_buf(),
            hint: "",
        });
    }
    for (what, path) in plan.work_files.named(plan.db.file().is_some()) {
        named.push(Named {
            what: format!("the {what} {}", path.display()),
            role: Role::Written,
            path,
            hint: " (the work database and its companions are named from --db, by default OUTPUT with .work.db appended)",
        });
    }
    // `-` reads standard input for MIXTAPE or CHANGES (not both): it cannot
    // be any other path of the run. (OUTPUT `-` is a staging file by now.)
    let is_dash = |n: &Named| n.path.as_os_str() == "-";
    let from_stdin = |n: &&Named| is_dash(n) && matches!(n.role, Role::Mixtape | Role::Changes);
    if named.iter().filter(from_stdin).count() == 2 {
        return Err(UsageError(
            "MIXTAPE and CHANGES are both `-`: only one of them can be read from standard input"
                .into(),
        )
        .into());
    }
    if let Some(dash) = named.iter().find(|n| is_dash(n) && !from_stdin(n)) {
        return Err(UsageError(format!(
            "{}: `-` is standard input or output only for MIXTAPE, CHANGES and OUTPUT; give a file path (./- for a file named -)",
            dash.what
        ))
        .into());
    }
    named.retain(|n| !is_dash(n));
    refuse_collisions(&named)
}

/// Refuses two of `named` that are one file, but for the pairs that may be.
fn refuse_collisions(named: &[Named]) -> Result<()> {
    let identities: Vec<Identity> = named.iter().map(|n| identity(&n.path)).collect();
    for (i, a) in named.iter().enumerate() {
        for (j, b) in named.iter().enumerate().skip(i + 1) {
            // An object is never rewritten in place: the run reads its
            // inputs by range until the end, and pins them.
            let in_place_object = matches!(identities[i], Identity::Object(_))
                && (a.role == Role::Output || b.role == Role::Output);
            if identities[i] != identities[j] || (may_share(a.role, b.role) && !in_place_object) {
                continue;
            }
            return Err(UsageError(format!(
                "{} and {} are the same file{}; give them different paths",
                a.what, b.what, named[j].hint,
            ))
            .into());
        }
    }
    Ok(())
}

/// The pairs that may be one file: an in-place run, and two inputs.
fn may_share(a: Role, b: Role) -> bool {
    matches!(
        (a, b),
        (Role::Mixtape, Role::Output)
            | (Role::Output, Role::Mixtape)
            | (Role::Mixtape, Role::Changes)
            | (Role::Changes, Role::Mixtape)
    )
}

/// Where opening `path` would land (see the module docs).
fn identity(path: &Path) -> Identity {
    if place::is_object(path) {
        return Identity::Object(path.to_path_buf());
    }
    if let Ok(meta) = std::fs::metadata(path) {
        return Identity::Inode {
            dev: meta.dev(),
            ino: meta.ino(),
        };
    }
    Identity::New(where_created(path))
}

/// The absolute path at which creating `path` would make a file: a dangling
/// symlink at its name is followed (as `open(O_CREAT)` does), its directory
/// resolved. Bounded like the kernel's own symlink following.
fn where_created(path: &Path) -> PathBuf {
    let mut at = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for _ in 0..40 {
        match std::fs::read_link(&at) {
            Ok(target) => {
                let dir = at.parent().map(Path::to_path_buf).unwrap_or_default();
                at = dir.join(target);
            }
            Err(_) => break,
        }
    }
    match (at.parent(), at.file_name()) {
        (Some(dir), Some(name)) => match dir.canonicalize() {
            Ok(dir) => dir.join(name),
            Err(_) => at.clone(),
        },
        _ => at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_new_files_resolve_as_the_open_would() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, "{}").unwrap();
        let hard = dir.path().join("hard.json");
        std::fs::hard_link(&file, &hard).unwrap();
        let soft = dir.path().join("soft.json");
        std::os::unix::fs::symlink("a.json", &soft).unwrap();
        assert_eq!(identity(&file), identity(&hard));
        assert_eq!(identity(&file), identity(&soft));
        // A dangling symlink names the file it would create.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("new.json", &dangling).unwrap();
        assert_eq!(identity(&dangling), identity(&dir.path().join("new.json")));
        // The same new file, named through `..`.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(
            identity(&sub.join("../x.json")),
            identity(&dir.path().join("x.json"))
        );
        assert_ne!(identity(&file), identity(&dir.path().join("x.json")));
    }
}
