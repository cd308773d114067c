//! Fuzz target: `chimed::wire::line::LineReader` fed arbitrary bytes in arbitrary chunks,
//! drained and compacted at arbitrary points (the poll loop may stop draining early when a
//! connection must wait, and reads more before it resumes), with a small frame limit.
//!
//! Input layout: `[max, n, plan[0..n], payload..]`
//! - `max % 65` is the frame limit (0..=64 bytes), small so the limit is hit often;
//! - each plan byte is one read: bits 0-4 the chunk size (0..=31), bits 5-6 how many frames
//!   to take after it (0, 1, 2 or all), bit 7 whether to `compact` afterwards; the plan
//!   repeats until the payload is used up (a plan of empty chunks gets one chunk with the
//!   rest); at the end everything left is drained.
//!
//! Checked: no panic; every frame is non-empty, holds no `\n` and is at most `max` bytes;
//! the frames (and the error, and the bytes left pending) are exactly those of a reference
//! model of SPEC §2 (one frame per `\n`, one `\r` before it dropped, blank lines skipped,
//! a line over the limit an error) — so no byte is lost, duplicated or reordered, and the
//! chunking never changes the result. In particular a frame of exactly `max` bytes whose
//! `\r` ends one read and whose `\n` starts the next is a frame, not an error (once a
//! quirk; pinned by tests/proptest_roundtrip.rs `regression_cr_at_limit_split_before_lf`
//! and the seed `cr_at_limit_split_before_lf`).
#![no_main]

use chimed::wire::line::{FrameError, LineReader};
use libfuzzer_sys::fuzz_target;

/// What the reader must produce for `payload` (SPEC §2), with the offset in `payload` at
/// which each frame's line ends (just past its `\n`).
struct Model {
    frames: Vec<Vec<u8>>,
    /// `Err` at the first line over the limit; else the length of the trailing partial line.
    end: Result<usize, FrameError>,
}

fn model(payload: &[u8], max: usize) -> Model {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some(off) = payload[pos..].iter().position(|&b| b == b'\n') {
        let mut line = &payload[pos..pos + off];
        pos += off + 1;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.len() > max {
            return Model {
                frames,
                end: Err(FrameError::TooLarge),
            };
        }
        if !line.is_empty() {
            frames.push(line.to_vec());
        }
    }
    let partial = &payload[pos..];
    // A partial line is already known to be too long once it exceeds `max` bytes plus a
    // possible `\r` (the `\n` may still come).
    let too_long = partial.len() > max + 1 || (partial.len() == max + 1 && partial.last() != Some(&b'\r'));
    Model {
        frames,
        end: if too_long {
            Err(FrameError::TooLarge)
        } else {
            Ok(partial.len())
        },
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = (data[0] % 65) as usize;
    let n = (data[1] % 32) as usize;
    let Some(plan) = data.get(2..2 + n) else {
        return;
    };
    let payload = &data[2 + n..];
    let want = model(payload, max);

    let mut r = LineReader::default();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut fed = 0;
    let mut step = 0;
    let mut idle_steps = 0;
    let mut error = None;
    // Takes up to `take` frames; returns the error if one was reported.
    let drain = |r: &mut LineReader, take: usize, got: &mut Vec<Vec<u8>>| -> Option<FrameError> {
        for _ in 0..take {
            match r.next_frame(max) {
                Ok(Some(f)) => {
                    assert!(!f.is_empty(), "empty frame");
                    assert!(!f.contains(&b'\n'), "frame holds a newline: {f:?}");
                    assert!(f.len() <= max, "frame of {} bytes over max {max}", f.len());
                    got.push(f.to_vec());
                }
                Ok(None) => {
                    // Asking again changes nothing.
                    assert_eq!(r.next_frame(max), Ok(None));
                    return None;
                }
                Err(e) => return Some(e),
            }
        }
        None
    };
    while fed < payload.len() && error.is_none() {
        let p = if plan.is_empty() { 0 } else { plan[step % plan.len()] };
        step += 1;
        let mut size = (p & 0x1f) as usize;
        if size == 0 {
            idle_steps += 1;
            if idle_steps > plan.len() {
                size = payload.len() - fed;
            }
        }
        let size = size.min(payload.len() - fed);
        r.extend(&payload[fed..fed + size]);
        fed += size;
        let take = match (p >> 5) & 3 {
            3 => usize::MAX,
            t => t as usize,
        };
        error = drain(&mut r, take, &mut got);
        if error.is_none() && p & 0x80 != 0 {
            r.compact();
        }
    }
    if error.is_none() {
        error = drain(&mut r, usize::MAX, &mut got);
    }

    assert!(got.len() <= want.frames.len(), "more frames than the model");
    assert_eq!(got, want.frames[..got.len()], "frames differ from the model");
    match error {
        None => {
            assert_eq!(got.len(), want.frames.len(), "frames missing");
            assert_eq!(want.end, Ok(r.pending()), "reader ended without error, model did not");
            r.compact();
            assert_eq!(r.pending(), want.end.unwrap());
        }
        Some(e) => {
            // The reader refused, so the model must refuse at the same frame: not earlier
            // (no frame of the model may be missing) and with the same error.
            assert!(
                got.len() == want.frames.len() && want.end == Err(e),
                "reader said {e:?} after {} frames (pending {}, fed {fed}), model: {} frames then {:?}",
                got.len(),
                r.pending(),
                want.frames.len(),
                want.end
            );
        }
    }
});
