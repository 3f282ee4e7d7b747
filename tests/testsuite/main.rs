//! The integration test suite: one binary with a module per area (cargo's
//! own `tests/testsuite` shape), so that the support code compiles once and
//! the suite links once. Every test runs the real binaries, built by cargo with
//! the `fault-injection` feature, in a fresh temporary directory.
//!
//! Tests that need a PostgreSQL server or root (network namespaces) skip,
//! saying so, where there is none; CONTRIBUTING.md says how CI requires them.

mod support;

mod bad_input;
mod by_hand;
mod compressed;
mod crash;
mod differential;
mod dry_run;
mod errors;
mod fixtures;
mod fuzz;
mod generate;
mod hosts;
mod join;
mod merge_race;
mod never_lost;
mod newcomer;
mod postgres;
mod progress;
mod report;
mod rival;
mod s3;
mod stdio;
mod store_contract;
mod warnings;
