//! Turns for big writes, so that a burst of large answers interleaves with small ones instead of
//! queueing ahead of them.
//!
//! Why it exists: a coalesced fetch answers all its waiters at once. A thousand waiters of a
//! 200 KiB body are a thousand runnable tasks, each of which copies its whole body into its socket
//! when polled; a hit whose request arrives then is queued behind all of them on its worker
//! (issue 31's burst: hot-key p99.9 ×11 for a quarter of a second). Here a write of more than
//! [`SLICE`] bytes goes out one slice at a time, and each slice takes a turn from a process-wide
//! FIFO that holds one turn per worker thread. A turn lasts one non-blocking write and is given
//! back at once, which hands it to the next writer in line. So about one big writer per worker is
//! runnable at any moment, the others sleep in the FIFO, and a hit waits behind at most one slice
//! per worker, whatever the burst. Writes of at most [`SLICE`] bytes (every ordinary hit) never
//! take a turn, and a client that reads slowly holds none: its socket being full ends the turn.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// The most one turn writes. A 1 MiB body is 32 turns; loopback copies a slice in ~10 µs.
pub const SLICE: usize = 32 * 1024;

/// The most buffers one vectored write passes on (hyper queues at most 16).
const MAX_PARTS: usize = 16;

/// The FIFO of turns, one per worker thread, shared by every connection.
#[derive(Clone)]
pub struct Turns(Arc<Semaphore>);

impl Turns {
    /// `workers` turns (at least one).
    pub fn new(workers: usize) -> Self {
        Turns(Arc::new(Semaphore::new(workers.max(1))))
    }

    /// A connection's place in the FIFO.
    pub fn writer(&self) -> Writer {
        Writer {
            turns: PollSemaphore::new(self.0.clone()),
            waiting: false,
        }
    }
}

/// One connection's side of [`Turns`].
pub struct Writer {
    turns: PollSemaphore,
    waiting: bool,
}

impl Writer {
    /// Whether the last write returned `Pending` because it waits for a turn (not for the
    /// socket).
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// A turn, or `None` when none is free (the task is woken when one is).
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<Option<OwnedSemaphorePermit>> {
        let turn = self.turns.poll_acquire(cx);
        self.waiting = turn.is_pending();
        turn
    }

    /// Writes `buf` to `io`: at once when it is small, else at most [`SLICE`] bytes of it in a
    /// turn.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.waiting = false;
        if buf.len() <= SLICE {
            return Pin::new(io).poll_write(cx, buf);
        }
        let Some(turn) = ready!(self.poll_turn(cx)) else {
            return Pin::new(io).poll_write(cx, buf);
        };
        let written = Pin::new(io).poll_write(cx, &buf[..SLICE]);
        drop(turn);
        written
    }

    /// As [`Writer::poll_write`], for a vectored write: what is over [`SLICE`] bytes in all is
    /// cut to its first [`SLICE`] bytes.
    pub fn poll_write_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.waiting = false;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total <= SLICE {
            return Pin::new(io).poll_write_vectored(cx, bufs);
        }
        let Some(turn) = ready!(self.poll_turn(cx)) else {
            return Pin::new(io).poll_write_vectored(cx, bufs);
        };
        let mut parts = [IoSlice::new(&[]); MAX_PARTS];
        let (mut n, mut room) = (0, SLICE);
        for buf in bufs.iter().filter(|b| !b.is_empty()).take(MAX_PARTS) {
            let take = buf.len().min(room);
            parts[n] = IoSlice::new(&buf[..take]);
            n += 1;
            room -= take;
            if room == 0 {
                break;
            }
        }
        let written = Pin::new(io).poll_write_vectored(cx, &parts[..n]);
        drop(turn);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_big_write_goes_out_a_slice_per_turn_and_a_small_one_needs_no_turn() {
        let turns = Turns::new(1);
        let mut writer = turns.writer();
        let (mut a, mut b) = tokio::io::duplex(4 * SLICE);
        let big = vec![7u8; 3 * SLICE + 5];
        let n = poll_fn(|cx| writer.poll_write(&mut a, cx, &big)).await.unwrap();
        assert_eq!(n, SLICE);
        let parts = [IoSlice::new(b"head"), IoSlice::new(&big)];
        let n = poll_fn(|cx| writer.poll_write_vectored(&mut a, cx, &parts))
            .await
            .unwrap();
        assert_eq!(n, SLICE, "the head and the body's first part, one slice in all");

        // Every turn out: a big write waits, a small one does not.
        let held = turns.0.clone().try_acquire_owned().unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(writer.poll_write(&mut a, &mut cx, &big).is_pending());
        assert!(writer.waiting());
        assert!(matches!(
            writer.poll_write(&mut a, &mut cx, b"small"),
            Poll::Ready(Ok(5))
        ));
        drop(held);
        let n = poll_fn(|cx| writer.poll_write(&mut a, cx, &big)).await.unwrap();
        assert_eq!(n, SLICE);

        let mut got = vec![0u8; 3 * SLICE + 5];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), b.read_exact(&mut got));
        read.await.expect("every byte written arrives").unwrap();
        assert_eq!(&got[SLICE..SLICE + 4], b"head");
        assert_eq!(&got[2 * SLICE..2 * SLICE + 5], b"small");
    }
}
