//! The stages of a run, named once.
//!
//! A stage knows its name (for bars, the summary and `--stop-after`), its slot in
//! the table of stage times, and whether the work store marks it done. Every
//! other module says "the plan stage" as [`Stage::Plan`], never as a string or an
//! index. It lives here, below the store, because the store keeps each stage's
//! done-marker; the stages themselves are [`crate::stages`].

/// decompress → import → plan → apply → merge → export, in this order (the
/// derived `Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Stage {
    /// Compressed inputs into kept files ([`crate::stages::decompress`]); nothing to do
    /// for plain ones.
    Decompress,
    /// MIXTAPE into the work database ([`crate::stages::import`]).
    Import,
    /// CHANGES cut into chunks ([`crate::stages::plan`]).
    Plan,
    /// Worker processes claiming chunks under leases ([`crate::stages::apply`]).
    Apply,
    /// The order-dependent rules settled per playlist ([`crate::stages::merge`]).
    Merge,
    /// OUTPUT and the rejects report written ([`crate::stages::export`]). Not a place to
    /// stop (`--stop-after export` would be a plain run), hence skipped by clap.
    #[value(skip)]
    Export,
}

impl Stage {
    /// Every stage, in the order a run does them.
    pub const ALL: [Stage; 6] = [
        Stage::Decompress,
        Stage::Import,
        Stage::Plan,
        Stage::Apply,
        Stage::Merge,
        Stage::Export,
    ];

    /// How the user sees the stage: in bars, the summary, `--stop-after`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decompress => "decompress",
            Stage::Import => "import",
            Stage::Plan => "plan",
            Stage::Apply => "apply",
            Stage::Merge => "merge",
            Stage::Export => "export",
        }
    }

    /// Its place in a table indexed by stage (stage times).
    pub fn slot(self) -> usize {
        self as usize
    }

    /// The `meta` key that marks the stage done, for the stages that have one.
    /// Apply has none: it is done when every chunk is (the store asks the
    /// chunks). Export has none: it only reads the store, so it always runs.
    /// Decompress has none: it is done when its kept files are there and whole,
    /// which only the files can say (the harness checks them).
    pub(crate) fn done_marker(self) -> Option<&'static str> {
        match self {
            Stage::Import => Some("import_done"),
            Stage::Plan => Some("plan_done"),
            Stage::Merge => Some("merge_done"),
            Stage::Decompress | Stage::Apply | Stage::Export => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn all_is_in_order_and_slots_are_positions() {
        for (i, stage) in Stage::ALL.iter().enumerate() {
            assert_eq!(stage.slot(), i);
        }
        assert!(Stage::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn stop_after_names_every_stage_but_export() {
        let names: Vec<String> = Stage::value_variants()
            .iter()
            .filter_map(|s| s.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(names, ["decompress", "import", "plan", "apply", "merge"]);
        for stage in Stage::value_variants() {
            assert_eq!(
                stage
                    .to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .as_deref(),
                Some(stage.name())
            );
        }
    }
}
