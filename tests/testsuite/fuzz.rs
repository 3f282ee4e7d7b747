//! A long-running randomized test (our fuzzer) for the boundary scanner and the
//! change parser: mutated JSON never panics, the scanner accepts exactly what
//! serde_json accepts, and what it cuts agrees with serde_json.
//!
//! `MIXTAPE_FUZZ_ITERS` sets the number of inputs (default 3000, a few seconds);
//! CONTRIBUTING.md "Fuzzing" says how long it was run and what it found.

use crate::support;

use mixtape::json::scan::{ScanError, Scanner};
use mixtape::{changes::change, json};
use support::gen::{self, Rng};

fn iterations() -> u64 {
    std::env::var("MIXTAPE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Tokens that make interesting insertions.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b" ",
    b"\n",
    b"\\u",
    b"\\ud800",
    b"0",
    b"-",
    b"1e",
    b".",
    b"true",
    b"nul",
    b"\xff",
    b"\xc3\xa9",
    b"\x00",
    b"\t",
    b"\"changes\":",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let at = if input.is_empty() {
            0
        } else {
            rng.below(input.len() as u64 + 1) as usize
        };
        match rng.below(5) {
            0 if !input.is_empty() => {
                let i = at.min(input.len() - 1);
                input[i] = rng.next() as u8;
            }
            1 if !input.is_empty() => {
                let i = at.min(input.len() - 1);
                input.remove(i);
            }
            2 => input.truncate(at),
            _ => {
                let t = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                input.splice(at..at, t.iter().copied());
            }
        }
    }
}

/// Scans `text` as one document: a value, then only white space.
fn scan_document(text: &[u8]) -> bool {
    let mut s = Scanner::new(text, 0);
    let result = (|| -> Result<(), ScanError> {
        s.value()?;
        match s.peek()? {
            None => Ok(()),
            Some(_) => Err(s.unexpected("end")),
        }
    })();
    result.is_ok()
}

#[test]
fn scanner_agrees_with_serde_json_on_mutated_documents() {
    let mut rng = Rng::new(0xF022);
    let n = iterations();
    let mut accepted = 0u64;
    for i in 0..n {
        let case = gen::case(i, 8);
        let mut text = if rng.chance(50) {
            case.mixtape.into_bytes()
        } else {
            case.changes.into_bytes()
        };
        if !rng.chance(10) {
            mutate(&mut rng, &mut text);
        }
        let ours = scan_document(&text);
        let theirs = match serde_json::from_slice::<serde_json::Value>(&text) {
            Ok(_) => true,
            // serde_json cannot hold 1e400 in an f64; JSON allows it, and the
            // tool keeps numbers as written. Not a disagreement about syntax.
            Err(e) if e.to_string().starts_with("number out of range") => continue,
            Err(_) => false,
        };
        assert_eq!(
            ours,
            theirs,
            "iteration {i}: scanner {ours}, serde_json {theirs} on {:?}",
            String::from_utf8_lossy(&text)
        );
        if ours {
            accepted += 1;
        }
    }
    assert!(
        accepted > n / 20,
        "too few mutated inputs stay valid: {accepted} of {n}"
    );
}

/// For every value the scanner accepts: minify, split into members and read as a
/// change without panicking, and the split agrees with serde_json.
#[test]
fn change_parser_never_panics_and_splits_like_serde_json() {
    let mut rng = Rng::new(0xC4A6);
    let n = iterations();
    for i in 0..n {
        let case = gen::case(i, 6);
        let mut text = case.changes.into_bytes();
        mutate(&mut rng, &mut text);
        if !scan_document(&text) {
            continue;
        }
        let minified = json::minify(&text);
        let parsed = change::parse(&minified);
        let value: serde_json::Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) if e.to_string().starts_with("number out of range") => continue,
            Err(e) => panic!("iteration {i}: the scanner accepted what serde_json rejects: {e}"),
        };
        match (json::object_members(&minified), &value) {
            (Some(members), serde_json::Value::Object(map)) => {
                // Same member names (serde_json keeps the last of a repeated name).
                let names: std::collections::BTreeSet<String> = members
                    .iter()
                    .map(|(k, _)| json::key_name(k).unwrap().into_owned())
                    .collect();
                let theirs: std::collections::BTreeSet<String> = map.keys().cloned().collect();
                assert_eq!(names, theirs, "iteration {i}");
                for (k, v) in &members {
                    let v: serde_json::Value = serde_json::from_slice(v).unwrap();
                    let name = json::key_name(k).unwrap();
                    if members
                        .iter()
                        .filter(|(k2, _)| json::key_name(k2).unwrap() == name)
                        .count()
                        == 1
                    {
                        assert_eq!(&v, &map[name.as_ref()], "iteration {i}");
                    }
                }
            }
            (None, serde_json::Value::Object(_)) => {
                panic!("iteration {i}: an object was not split")
            }
            (Some(_), _) => panic!("iteration {i}: a non-object was split"),
            (None, _) => assert_eq!(parsed.change.unwrap_err(), "change is not an object"),
        }
        if let serde_json::Value::Array(items) = &value {
            let ours = json::array_elements(&minified).expect("an array splits");
            assert_eq!(ours.len(), items.len(), "iteration {i}");
        }
    }
}

/// The changes of a generated CHANGES file, each as its raw text (with the
/// white space a pretty case puts inside).
fn raw_changes(changes: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Object<'a> {
        #[serde(borrow)]
        changes: Vec<&'a serde_json::value::RawValue>,
    }
    let trimmed = changes.trim_start();
    if trimmed.starts_with('[') {
        let list: Vec<&serde_json::value::RawValue> = serde_json::from_str(trimmed).unwrap();
        list.iter().map(|v| v.get().to_string()).collect()
    } else if changes.contains("\"changes\"") {
        let object: Object = serde_json::from_str(changes).unwrap();
        object.changes.iter().map(|v| v.get().to_string()).collect()
    } else {
        changes
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    }
}

/// Reading a change in one pass over its raw text (`change::read`) gives
/// exactly what minifying it and reading that gives, for generated changes
/// in every form, pretty or not, and mutated ones the scanner accepts.
#[test]
fn reading_a_change_in_one_pass_agrees_with_minifying_it_first() {
    let mut rng = Rng::new(0x0E5A);
    let mut scratch = Vec::new();
    let (mut compared, mut spaced) = (0u64, 0u64);
    for (seed, case) in gen::cases_in_every_form(0..iterations() / 10 + 20, 12) {
        for raw in raw_changes(&case.changes) {
            let mut text = raw.into_bytes();
            if rng.chance(30) {
                mutate(&mut rng, &mut text);
                if !scan_document(&text) {
                    continue;
                }
            }
            let minified = json::minify(&text);
            spaced += u64::from(minified.len() != text.len());
            assert_eq!(
                change::read(&text, &mut scratch),
                change::parse(&minified),
                "seed {seed}: {:?}",
                String::from_utf8_lossy(&text)
            );
            // Read at the start of more text (as the worker reads its chunk),
            // it is the same change, and ends where the change ends.
            let end = text.len()
                - text
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            let mut followed = text[..end].to_vec();
            followed.extend_from_slice(b" {\"op\":1}");
            if let Some((parsed, len)) = change::read_prefix(&followed) {
                assert_eq!(parsed, change::parse(&minified), "seed {seed}");
                assert_eq!(
                    len,
                    end,
                    "seed {seed}: {:?}",
                    String::from_utf8_lossy(&text)
                );
            }
            compared += 1;
        }
    }
    assert!(
        compared > 200 && spaced > 50,
        "{compared} changes, {spaced} with white space"
    );
}
