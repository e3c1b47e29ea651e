//! Live output of one running attempt: what its process has written so
//! far, redacted as it arrives, for followers (`GET …/logs?follow=true`,
//! `switchyard run --output`). The runtime registers one per attempt of a
//! kind that captures output and drops it once the attempt's logs are
//! stored; the executor pushes what it reads.
//!
//! Bounded: at most [`LIVE_CAP`] bytes of shown text are kept (the oldest
//! pieces dropped first; a follower that falls that far behind is told how
//! much it missed), plus, per stream, the few bytes held back because they
//! could be the start of a secret or of a character.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::log::RunId;
use crate::spec::Secrets;

/// Bytes of shown output kept per attempt for followers that join late.
pub const LIVE_CAP: usize = 256 * 1024;

/// What a kept piece costs beyond its text (counted against [`LIVE_CAP`],
/// so a task writing many tiny pieces stays within it too).
const PIECE_OVERHEAD: usize = 64;

/// Which stream a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One shown piece of output, numbered in the attempt's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub seq: u64,
    pub stream: Stream,
    pub text: Arc<str>,
}

/// A piece as a tap sees it: every attempt's output in one channel.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub run_id: RunId,
    pub task: Arc<str>,
    pub attempt: u32,
    pub stream: Stream,
    pub text: Arc<str>,
}

/// What a follower reads from `from` on.
#[derive(Debug, Default)]
pub struct Read {
    pub pieces: Vec<Piece>,
    /// Bytes of pieces dropped before the follower read them.
    pub missed: u64,
    /// Where to read from next.
    pub next: u64,
    /// The attempt's process is done and everything it wrote is shown.
    pub finished: bool,
}

/// The output of one attempt as it is produced.
pub struct LiveAttempt {
    pub run_id: RunId,
    pub task: Arc<str>,
    pub attempt: u32,
    secrets: Arc<Secrets>,
    state: Mutex<State>,
    /// Bumped whenever something is shown or the attempt finishes.
    changed: watch::Sender<u64>,
    tap: Option<mpsc::UnboundedSender<Tapped>>,
}

#[derive(Default)]
struct State {
    pieces: VecDeque<Piece>,
    /// Bytes `pieces` take: their text plus [`PIECE_OVERHEAD`] each.
    kept: usize,
    /// Bytes of text dropped from the front, per piece seq (for `missed`).
    dropped: VecDeque<(u64, usize)>,
    next_seq: u64,
    /// Per stream, bytes read but not shown yet.
    pending: [Vec<u8>; 2],
    finished: bool,
}

impl std::fmt::Debug for LiveAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveAttempt")
            .field("run_id", &self.run_id)
            .field("task", &self.task)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl LiveAttempt {
    pub fn new(
        run_id: RunId,
        task: Arc<str>,
        attempt: u32,
        secrets: Arc<Secrets>,
        tap: Option<mpsc::UnboundedSender<Tapped>>,
    ) -> Self {
        Self {
            run_id,
            task,
            attempt,
            secrets,
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
            tap,
        }
    }

    /// Bytes the process wrote to `stream`.
    pub fn push(&self, stream: Stream, bytes: &[u8]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.finished {
            return;
        }
        let pending = &mut state.pending[stream.index()];
        pending.extend_from_slice(bytes);
        let (text, used) = self.secrets.redact_prefix(pending, false);
        pending.drain(..used);
        self.show(&mut state, stream, text);
    }

    /// A line switchyard itself adds to a stream (shown as is).
    pub fn note(&self, stream: Stream, text: &str) {
        if let Ok(mut state) = self.state.lock() {
            self.show(&mut state, stream, text.to_string());
        }
    }

    /// The process's streams are closed: what was held back is shown, and
    /// followers learn that nothing more comes.
    pub fn finish(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.finished {
            return;
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut state.pending[stream.index()]);
            let (text, _) = self.secrets.redact_prefix(&pending, true);
            self.show(&mut state, stream, text);
        }
        state.finished = true;
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    fn show(&self, state: &mut State, stream: Stream, text: String) {
        if text.is_empty() {
            return;
        }
        let text: Arc<str> = text.into();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.kept += text.len() + PIECE_OVERHEAD;
        if let Some(tap) = &self.tap {
            let _ = tap.send(Tapped {
                run_id: self.run_id,
                task: Arc::clone(&self.task),
                attempt: self.attempt,
                stream,
                text: Arc::clone(&text),
            });
        }
        state.pieces.push_back(Piece { seq, stream, text });
        while state.kept > LIVE_CAP && state.pieces.len() > 1 {
            if let Some(old) = state.pieces.pop_front() {
                state.kept -= old.text.len() + PIECE_OVERHEAD;
                state.dropped.push_back((old.seq, old.text.len()));
                if state.dropped.len() > 4096 {
                    state.dropped.pop_front();
                }
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// The pieces from `from` on (0: from the start).
    pub fn read(&self, from: u64) -> Read {
        let Ok(state) = self.state.lock() else {
            return Read {
                next: from,
                finished: true,
                ..Read::default()
            };
        };
        let first = state.pieces.front().map_or(state.next_seq, |p| p.seq);
        let missed = if from < first {
            state
                .dropped
                .iter()
                .filter(|(seq, _)| *seq >= from)
                .map(|(_, len)| *len as u64)
                .sum()
        } else {
            0
        };
        let pieces: Vec<Piece> = state
            .pieces
            .iter()
            .filter(|p| p.seq >= from)
            .cloned()
            .collect();
        Read {
            pieces,
            missed,
            next: state.next_seq,
            finished: state.finished,
        }
    }

    /// Changes when something is shown or the attempt finishes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn attempt(secret: &str) -> LiveAttempt {
        let secrets = Secrets::from_values([("s".to_string(), secret.to_string())].into());
        LiveAttempt::new(RunId::nil(), "t".into(), 1, Arc::new(secrets), None)
    }

    fn text(read: &Read, stream: Stream) -> String {
        read.pieces
            .iter()
            .filter(|p| p.stream == stream)
            .map(|p| p.text.as_ref())
            .collect()
    }

    #[test]
    fn pieces_are_redacted_and_held_back_only_while_they_could_be_a_secret() {
        let live = attempt("hunter2-secret");
        live.push(Stream::Stdout, b"one\npass=hunter2-");
        assert_eq!(text(&live.read(0), Stream::Stdout), "one\npass=");
        live.push(Stream::Stdout, b"secret\n");
        live.push(Stream::Stderr, b"warn\n");
        let read = live.read(0);
        assert_eq!(text(&read, Stream::Stdout), "one\npass=[redacted]\n");
        assert_eq!(text(&read, Stream::Stderr), "warn\n");
        assert!(!read.finished);
        live.push(Stream::Stdout, b"tail hunter");
        live.finish();
        let later = live.read(read.next);
        assert_eq!(text(&later, Stream::Stdout), "tail hunter");
        assert!(later.finished);
    }

    #[test]
    fn a_follower_far_behind_learns_how_much_it_missed() {
        let live = attempt("unused-secret-value");
        let line = vec![b'x'; 1024];
        for _ in 0..(LIVE_CAP / 1024 + 10) {
            live.push(Stream::Stdout, &line);
        }
        let read = live.read(0);
        assert!(read.missed >= 10 * 1024, "{}", read.missed);
        let kept: usize = read.pieces.iter().map(|p| p.text.len()).sum();
        assert!(kept <= LIVE_CAP);
    }
}
