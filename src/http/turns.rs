//! Turns for big writes, so that a burst of large answers interleaves with small ones instead of
//! queueing ahead of them.
//!
//! Why it exists: a coalesced fetch answers all its waiters at once. A thousand waiters of a
//! 200 KiB body are a thousand runnable tasks, each of which copies its whole body into its socket
//! when polled; a hit whose request arrives then is queued behind all of them on its worker
//! (issue 31's burst: hot-key p99.9 ×11 for a quarter of a second). Here a write of more than
//! [`SLICE`] bytes first takes a turn from a process-wide FIFO that holds one turn per worker
//! thread. Under its turn the answer goes out one slice per poll: after each slice its task
//! gives way (it wakes itself, which puts it at the back of its worker's run queue, turn in
//! hand), so every task queued meanwhile, a hit's, runs before its next slice. The turn goes back
//! when the connection's buffered answer is written (hyper flushes) or its socket is full (a
//! client that reads slowly holds none). So one big writer per worker is runnable at a time, the
//! others sleep in the FIFO, off the run queue, and a hit waits behind at most one slice per
//! worker. Writes of at most [`SLICE`] bytes without a turn (every ordinary hit) never take one.
//!
//! The first design gave the turn back after every slice. That let a storm through: the
//! thousand waiters woken at once sat in the run queue, not in the FIFO, so each found the turn
//! free and wrote its whole body in its first poll (hot-key stalls of 15-40 ms, see
//! docs/benchmarks.md).

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// The most written per poll under a turn. A 1 MiB body is 32 slices; loopback copies one in
/// ~13 µs.
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
            held: None,
            wrote: false,
            waiting: false,
        }
    }
}

/// One connection's side of [`Turns`].
pub struct Writer {
    turns: PollSemaphore,
    /// The turn this connection holds while its big write goes out, a slice per poll.
    held: Option<OwnedSemaphorePermit>,
    /// A slice went out since the task last went to the back of the run queue.
    wrote: bool,
    waiting: bool,
}

impl Writer {
    /// Whether the last write returned `Pending` because it waits for a turn or gave way to
    /// other tasks (not for the socket).
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// How many of `len` bytes may go out now: all of a small write made without a turn, else
    /// at most [`SLICE`] under the turn (taken now, or kept from the last slice). `Pending` while
    /// every turn is out (woken when one comes back), or after a slice in this poll: the task is
    /// then woken at once, which puts it at the back of its worker's run queue, turn in hand,
    /// so every task queued meanwhile (a hit) runs before its next slice.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<usize> {
        self.waiting = false;
        if self.held.is_none() {
            if len <= SLICE {
                return Poll::Ready(len);
            }
            match self.turns.poll_acquire(cx) {
                Poll::Pending => {
                    self.waiting = true;
                    return Poll::Pending;
                }
                // Closed: never here (the semaphore is never closed); write unturned.
                Poll::Ready(None) => return Poll::Ready(len),
                Poll::Ready(Some(turn)) => {
                    self.held = Some(turn);
                    self.wrote = false;
                }
            }
        }
        if self.wrote {
            self.wrote = false;
            self.waiting = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(len.min(SLICE))
    }

    /// Keeps the turn after a slice that went out; gives it back when the socket is full (a
    /// client that reads slowly holds none) or the write failed.
    fn after<T>(&mut self, written: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if self.held.is_some() {
            match &written {
                Poll::Ready(Ok(_)) => self.wrote = true,
                _ => self.held = None,
            }
        }
        written
    }

    /// Gives the turn back: the connection's buffered answer is written (hyper flushes once
    /// its buffer is empty), so it has nothing big to write until its next answer.
    pub fn flushed(&mut self) {
        self.held = None;
        self.wrote = false;
    }

    /// Writes `buf` to `io`: at once when it is small, else at most [`SLICE`] bytes of it, a
    /// slice per poll while holding a turn.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let room = ready!(self.poll_room(cx, buf.len()));
        let written = Pin::new(io).poll_write(cx, &buf[..room]);
        self.after(written)
    }

    /// As [`Writer::poll_write`], for a vectored write: what is over [`SLICE`] bytes in all is
    /// cut to its first [`SLICE`] bytes.
    pub fn poll_write_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let room = ready!(self.poll_room(cx, total));
        if room == total {
            let written = Pin::new(io).poll_write_vectored(cx, bufs);
            return self.after(written);
        }
        let mut parts = [IoSlice::new(&[]); MAX_PARTS];
        let (mut n, mut left) = (0, room);
        for buf in bufs.iter().filter(|b| !b.is_empty()).take(MAX_PARTS) {
            let take = buf.len().min(left);
            parts[n] = IoSlice::new(&buf[..take]);
            n += 1;
            left -= take;
            if left == 0 {
                break;
            }
        }
        let written = Pin::new(io).poll_write_vectored(cx, &parts[..n]);
        self.after(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl futures_util::task::ArcWake for Count {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_big_write_goes_out_a_slice_per_poll_under_a_turn_and_a_small_one_needs_no_turn() {
        let turns = Turns::new(1);
        let mut writer = turns.writer();
        let (mut a, mut b) = tokio::io::duplex(8 * SLICE);
        let big = vec![7u8; 3 * SLICE + 5];
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = futures_util::task::waker(count.clone());
        let mut cx = Context::from_waker(&waker);

        // One poll: a slice goes out, then the writer gives way, turn in hand, and asks to be
        // polled again (woken at once: the back of the run queue).
        assert!(matches!(
            writer.poll_write(&mut a, &mut cx, &big),
            Poll::Ready(Ok(SLICE))
        ));
        assert!(writer.poll_write(&mut a, &mut cx, &big[SLICE..]).is_pending());
        assert!(writer.waiting(), "giving way is not the client's doing");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(
            turns.0.available_permits() == 0,
            "the turn is kept across the yield"
        );

        // The next poll: the head and the body's next part, one slice in all.
        let parts = [IoSlice::new(b"head"), IoSlice::new(&big)];
        let n = poll_fn(|cx| writer.poll_write_vectored(&mut a, cx, &parts))
            .await
            .unwrap();
        assert_eq!(n, SLICE);

        // Flushed: the turn goes back, and another connection's big write takes it.
        writer.flushed();
        let mut other = turns.writer();
        assert!(matches!(
            other.poll_write(&mut a, &mut cx, &big),
            Poll::Ready(Ok(SLICE))
        ));
        // Meanwhile a big write waits for it; a small one does not.
        assert!(writer.poll_write(&mut a, &mut cx, &big).is_pending());
        assert!(writer.waiting());
        assert!(matches!(
            writer.poll_write(&mut a, &mut cx, b"small"),
            Poll::Ready(Ok(5))
        ));
        other.flushed();
        let n = poll_fn(|cx| writer.poll_write(&mut a, cx, &big)).await.unwrap();
        assert_eq!(n, SLICE);

        let mut got = vec![0u8; 4 * SLICE + 5];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), b.read_exact(&mut got));
        read.await.expect("every byte written arrives").unwrap();
        assert_eq!(&got[SLICE..SLICE + 4], b"head");
        assert_eq!(&got[3 * SLICE..3 * SLICE + 5], b"small");
    }

    #[tokio::test]
    async fn a_full_socket_gives_the_turn_back() {
        let turns = Turns::new(1);
        let mut writer = turns.writer();
        // Room for one slice only: the client stopped reading.
        let (mut a, _b) = tokio::io::duplex(SLICE);
        let big = vec![1u8; 4 * SLICE];
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            writer.poll_write(&mut a, &mut cx, &big),
            Poll::Ready(Ok(SLICE))
        ));
        assert!(writer.poll_write(&mut a, &mut cx, &big).is_pending(), "gives way");
        assert!(
            writer.poll_write(&mut a, &mut cx, &big).is_pending(),
            "socket full"
        );
        assert!(
            !writer.waiting(),
            "waiting for the client, which the watchdog times"
        );
        assert_eq!(turns.0.available_permits(), 1, "a slow reader holds no turn");
    }
}
