//! The benchmark's rival (examples/rival.rs) must give the right answer, or its
//! times mean nothing: on the differential tests' generated cases (every op,
//! every reject reason, all three forms, automatic ids), its output and
//! rejects report equal the reference's, byte for byte.

use crate::support;

#[allow(dead_code)]
#[path = "../../examples/rival.rs"]
mod rival_program;

use support::{assert_same_text, gen, reference};

#[test]
fn the_rival_agrees_with_the_reference_on_generated_cases() {
    for seed in (0..60).chain(1000..1040).chain(5000..5010) {
        let max_changes = match seed {
            0..60 => 12,
            1000..1040 => 60,
            _ => 400,
        };
        let case = gen::case(seed, max_changes);
        let expected = reference::run(&case.mixtape, &case.changes).unwrap();
        let mut output = Vec::new();
        let outcome = rival_program::run(
            case.mixtape.as_bytes(),
            case.changes.as_bytes(),
            &mut output,
        )
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_same_text(
            &format!("seed {seed}: output"),
            &expected.output,
            &String::from_utf8(output).unwrap(),
        );
        assert_same_text(
            &format!("seed {seed}: rejects"),
            &expected.rejects,
            &String::from_utf8(outcome.rejects).unwrap(),
        );
        assert_eq!(outcome.warnings, expected.warnings, "seed {seed}: warnings");
    }
}
