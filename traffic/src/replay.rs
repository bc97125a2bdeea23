//! The replayer: a capture's frames out of a port, paced in real time (with a speed factor), as
//! fast as possible, or in virtual time (no waiting at all: each frame is handed over with the
//! time it is due, for an embedded simulation). Loops; records what it sent as pcapng.
//!
//! The capture is read as it goes (a frame at a time), so its size does not matter; frames go
//! out in batches (up to [`BATCH`] per io_uring submission) of those that are due.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::capture::{CaptureError, CaptureReader, CaptureWriter, Frame};
use crate::port::{FrameSink, PortError};

/// Most frames per batch handed to a port.
pub const BATCH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// The capture's own timing, `speed` times faster (2.0: twice as fast).
    RealTime { speed: f64 },
    /// No waiting.
    AsFast,
}

#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub pace: Pace,
    /// Passes over the capture (≥ 1).
    pub loops: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("{0}")]
    Options(String),
}

/// What a replay did.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub port: String,
    /// Frames read from the capture (all passes).
    pub read: u64,
    /// Frames sent.
    pub frames: u64,
    pub bytes: u64,
    /// Frames the port could not take (counted, not retried).
    pub dropped: u64,
    pub loops: u32,
    pub seconds: f64,
    pub frames_per_second: f64,
    pub bits_per_second: f64,
}

/// Gap added between the end of one pass and the start of the next.
const LOOP_GAP_NS: u64 = 1_000;

/// The frames of `path`, `loops` times over, each with the time it is due relative to the
/// first frame (nanoseconds): the capture's own time line, passes laid end to end.
pub fn schedule(
    path: &Path,
    loops: u32,
    mut f: impl FnMut(u64, Frame) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let mut offset = 0u64;
    for _ in 0..loops {
        let mut first = None;
        let mut last = 0u64;
        for frame in CaptureReader::open(path)? {
            let frame = frame?;
            let t0 = *first.get_or_insert(frame.ts_ns);
            // Captures are not always in order: a frame from the past is due at once.
            let rel = frame.ts_ns.saturating_sub(t0).max(last);
            last = rel;
            f(offset + rel, frame)?;
        }
        offset += last + LOOP_GAP_NS;
    }
    Ok(())
}

/// Virtual time: hands each frame over with its due time (ns after the first frame); the
/// caller's clock follows these times. Nothing waits.
pub fn replay_virtual(
    path: &Path,
    loops: u32,
    f: impl FnMut(u64, Frame) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    schedule(path, loops, f)
}

/// Replays `path` out of `sink`. `record` receives every frame sent, with the time it was sent
/// (wall clock); `progress` is called with the frames sent so far, about every batch.
pub fn replay(
    path: &Path,
    sink: &mut dyn FrameSink,
    opts: &ReplayOptions,
    mut record: Option<&mut CaptureWriter>,
    mut progress: impl FnMut(u64),
) -> Result<Summary, ReplayError> {
    if opts.loops == 0 {
        return Err(ReplayError::Options("--loops must be at least 1".into()));
    }
    if let Pace::RealTime { speed } = opts.pace {
        if !(speed > 0.0 && speed.is_finite()) {
            return Err(ReplayError::Options(format!("the speed factor must be positive, not {speed}")));
        }
    }
    let start = Instant::now();
    let wall0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut s = Summary { port: sink.name(), loops: opts.loops, ..Summary::default() };
    let mut batch: Vec<Frame> = Vec::with_capacity(BATCH);
    let mut flush =
        |batch: &mut Vec<Frame>, s: &mut Summary, record: &mut Option<&mut CaptureWriter>| -> Result<(), ReplayError> {
            if batch.is_empty() {
                return Ok(());
            }
            let refs: Vec<&[u8]> = batch.iter().map(|f| f.data.as_slice()).collect();
            let sent = sink.send_batch(&refs)?;
            s.read += batch.len() as u64;
            s.frames += sent.frames;
            s.bytes += sent.bytes;
            s.dropped += sent.dropped;
            if let Some(w) = record.as_deref_mut() {
                let now = (wall0 + start.elapsed()).as_nanos() as u64;
                for f in batch.iter() {
                    w.write(&Frame { ts_ns: now, interface: 0, ..f.clone() })?;
                }
            }
            batch.clear();
            progress(s.frames + s.dropped);
            Ok(())
        };
    schedule(path, opts.loops, |due_ns, frame| {
        if let Pace::RealTime { speed } = opts.pace {
            let due = Duration::from_nanos((due_ns as f64 / speed) as u64);
            let now = start.elapsed();
            if due > now {
                // Send what is already due before waiting for this one.
                flush(&mut batch, &mut s, &mut record)?;
                std::thread::sleep(due - now);
            }
        }
        batch.push(frame);
        if batch.len() == BATCH {
            flush(&mut batch, &mut s, &mut record)?;
        }
        Ok(())
    })?;
    flush(&mut batch, &mut s, &mut record)?;
    s.seconds = start.elapsed().as_secs_f64();
    if s.seconds > 0.0 {
        s.frames_per_second = s.frames as f64 / s.seconds;
        s.bits_per_second = s.bytes as f64 * 8.0 / s.seconds;
    }
    Ok(s)
}
