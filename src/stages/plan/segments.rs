//! The plan on several threads, for the two forms whose changes sit at the top
//! level of the file: JSON Lines and the bare array.
//!
//! The body of CHANGES is cut into segments of about equal size, each starting
//! just after a newline: a raw newline is never inside a JSON string, and in
//! the usual file (one change per line) it is where a change starts. Each
//! thread scans its segment with its own validating scanner, as if a change
//! started there, and records how many changes it saw and, for every cut the
//! plan wants (`super::cut_target`: byte `size * i / K`, K the wanted chunks),
//! the first change starting at or after it.
//!
//! A guess can be wrong: after a newline inside a pretty-printed change, a
//! segment starts in the middle of a value. So the segments are checked in
//! order against where the one before really ended (the first change after
//! its last): a segment that started exactly there scanned exactly what one
//! scan from the start would have (a scanner at a change boundary has no other
//! state), errors included; one that did not is scanned again from the right
//! place. The result, errors and all, is the one-thread scan's.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Chunk, Form, Plan};
use crate::json::scan::{ScanError, ScanResult, Scanner};
use crate::place::{self, Reader};

/// Where and how the body of CHANGES is split.
pub(super) struct Split<'a> {
    pub path: &'a Path,
    pub form: Form,
    /// File size, and where the body starts: after `[`, or at the first change.
    pub size: u64,
    pub body_start: u64,
    /// The plan's cut targets: byte `size * i / K`, `i` in `1..K` (K chunks wanted).
    pub targets: Vec<u64>,
}

/// What scanning one segment found.
struct Segment {
    start: u64,
    outcome: ScanResult<()>,
    changes: u64,
    /// The offset of its first change, and where its last change ended.
    first: Option<u64>,
    last_end: u64,
    /// For each target, the first change starting at or after it: (local
    /// index, offset).
    cuts: Vec<Option<(u64, u64)>>,
    /// Where the next change would start: the first value after the last one
    /// this segment scanned (the next segment should start exactly here).
    continuation: u64,
    /// The segment reached the end of the changes (end of file, or the `]`
    /// of the array and then the end of file).
    finished: bool,
}

impl Split<'_> {
    /// Scans the body on up to `threads` threads; `progress` gets bytes done.
    pub fn run(&self, threads: usize, progress: &mut dyn FnMut(u64)) -> ScanResult<Plan> {
        let starts = self.segment_starts(threads)?;
        let done = AtomicU64::new(0);
        let segments: Vec<Segment> = std::thread::scope(|scope| {
            let handles: Vec<_> = starts
                .iter()
                .enumerate()
                .map(|(i, &start)| {
                    let bound = starts.get(i + 1).copied().unwrap_or(self.size);
                    let done = &done;
                    scope.spawn(move || self.scan_segment(start, bound, done))
                })
                .collect();
            while !handles.iter().all(|h| h.is_finished()) {
                progress(self.body_start + done.load(Ordering::Relaxed));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("a plan thread panicked"))
                .collect()
        });
        self.resolve(&starts, segments, &done)
    }

    /// Segment starts: the body's start, then just after the first newline
    /// at or after each equal share of the body (fewer when shares have none).
    fn segment_starts(&self, threads: usize) -> ScanResult<Vec<u64>> {
        let body = self.size - self.body_start;
        let mut starts = vec![self.body_start];
        let mut window = vec![0u8; 64 << 10];
        for i in 1..threads as u64 {
            let mut at = self.body_start + body * i / threads as u64;
            if at <= *starts.last().expect("one start") {
                continue;
            }
            // The newline may be far (one huge change): look until the end,
            // a window at a time (one ranged read each, for an object).
            let newline = loop {
                let window_end = at + window.len() as u64;
                let mut reader = place::open_range(self.path, at, window_end)?;
                let n = crate::json::values::read_full(&mut reader, &mut window)?;
                if n == 0 {
                    break None;
                }
                if let Some(k) = memchr::memchr(b'\n', &window[..n]) {
                    break Some(at + k as u64 + 1);
                }
                at += n as u64;
            };
            match newline {
                Some(start) if start < self.size => starts.push(start),
                _ => break,
            }
        }
        Ok(starts)
    }

    /// Scans changes starting before `bound`, from `start` (see module docs).
    fn scan_segment(&self, start: u64, bound: u64, done: &AtomicU64) -> Segment {
        let mut segment = Segment {
            start,
            outcome: Ok(()),
            changes: 0,
            first: None,
            last_end: start,
            cuts: vec![None; self.targets.len()],
            continuation: start,
            finished: false,
        };
        segment.outcome = self.scan_into(&mut segment, bound, done);
        segment
    }

    fn scan_into(&self, seg: &mut Segment, bound: u64, done: &AtomicU64) -> ScanResult<()> {
        let mut s = Scanner::new(place::open_at(self.path, seg.start)?, seg.start);
        let mut reported = seg.start;
        let mut next_target = 0;
        loop {
            let Some(b) = s.peek()? else {
                seg.continuation = s.offset();
                seg.finished = true;
                return if self.form == Form::Array {
                    // After a comma: where the one-thread scan expects a value.
                    Err(s.unexpected("a value"))
                } else {
                    Ok(())
                };
            };
            let at = s.offset();
            if self.form == Form::Array
                && b == b']'
                && seg.changes == 0
                && seg.start == self.body_start
            {
                // `[]`: an empty array.
                s.expect(b']', "']'")?;
                return self.finish_array(&mut s, seg);
            }
            if at >= bound {
                seg.continuation = at;
                return Ok(());
            }
            while next_target < self.targets.len() && self.targets[next_target] <= at {
                seg.cuts[next_target] = Some((seg.changes, at));
                next_target += 1;
            }
            seg.first.get_or_insert(at);
            super::scan_change(&mut s)?;
            seg.changes += 1;
            seg.last_end = s.offset();
            crate::run::fault::point("plan-change");
            if seg.changes.is_multiple_of(4096) {
                done.fetch_add(s.offset() - reported, Ordering::Relaxed);
                reported = s.offset();
                if crate::run::interrupt::requested() {
                    return Err(ScanError::Interrupted);
                }
            }
            if self.form == Form::Array && !s.eat(b',')? {
                s.expect(b']', "',' or ']' after a change")?;
                return self.finish_array(&mut s, seg);
            }
        }
    }

    /// After the array's `]`: nothing but white space may follow.
    fn finish_array(&self, s: &mut Scanner<Reader>, seg: &mut Segment) -> ScanResult<()> {
        seg.finished = true;
        if s.peek()?.is_some() {
            return Err(s.unexpected(
                "end of input after the changes document (only JSON Lines may hold several values)",
            ));
        }
        seg.continuation = s.offset();
        Ok(())
    }

    /// Puts the segments together in order, scanning again any that started
    /// in the wrong place (see module docs), and cuts the chunks.
    fn resolve(
        &self,
        starts: &[u64],
        segments: Vec<Segment>,
        done: &AtomicU64,
    ) -> ScanResult<Plan> {
        let mut accepted: Vec<Segment> = Vec::new();
        let mut expected = self.body_start;
        for (i, mut seg) in segments.into_iter().enumerate() {
            if accepted.last().is_some_and(|last| last.finished) {
                break;
            }
            if seg.start != expected {
                // A wrong guess: this segment's range, scanned from where the
                // previous one really stopped.
                let bound = starts.get(i + 1).copied().unwrap_or(self.size);
                seg = self.scan_segment(expected, bound.max(expected), done);
            }
            std::mem::replace(&mut seg.outcome, Ok(()))?;
            expected = seg.continuation;
            accepted.push(seg);
        }
        Ok(self.cut(&accepted))
    }

    /// The chunks, as [`super::Cutter`] would cut them from one scan.
    fn cut(&self, segments: &[Segment]) -> Plan {
        let total: u64 = segments.iter().map(|s| s.changes).sum();
        let mut plan = Plan {
            form: self.form,
            changes: total,
            chunks: Vec::new(),
        };
        let mut before = 0;
        let mut first = None;
        // For each target, the first change at or after it in the whole file.
        let mut cuts: Vec<Option<(u64, u64)>> = vec![None; self.targets.len()];
        let mut last_end = self.body_start;
        for seg in segments {
            if first.is_none() {
                first = seg.first;
            }
            for (j, cut) in seg.cuts.iter().enumerate() {
                if cuts[j].is_none() {
                    cuts[j] = cut.map(|(index, at)| (before + index, at));
                }
            }
            before += seg.changes;
            if seg.changes > 0 {
                last_end = seg.last_end;
            }
        }
        let Some(first) = first else {
            return plan;
        };
        let mut bounds = vec![(0u64, first)];
        for (index, at) in cuts.into_iter().flatten() {
            if at > bounds.last().expect("one bound").1 {
                bounds.push((index, at));
            }
        }
        for (k, &(index, at)) in bounds.iter().enumerate() {
            let (end, next_index) = match bounds.get(k + 1) {
                Some(&(next_index, next_at)) => (next_at, next_index),
                None => (last_end, total),
            };
            plan.chunks.push(Chunk {
                start: at,
                end,
                first_index: index,
                changes: next_index - index,
            });
        }
        plan
    }
}
