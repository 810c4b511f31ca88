//! Streamed response bodies: a producer on any thread writes into a
//! [`BodyWriter`], a bounded queue of bytes, and the connection's loop
//! sends them as they come.
//!
//! The queue is the backpressure. The loop takes bytes from it only while
//! the connection's output is below its high-water mark, so a client that
//! does not read leaves the queue full, and a full queue blocks the
//! producer's `write`: never the loop. The producer wakes the loop when the
//! queue stops being empty and when it ends; the loop wakes the producer
//! when it has taken bytes, and when the connection is gone (its writes then
//! fail with `BrokenPipe`).
//!
//! Memory per stream is bounded by [`STREAM_QUEUE_BYTES`] here plus the
//! connection's output high-water mark (256 KiB) and one chunk's framing.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

/// Bytes a stream's queue holds before its producer's writes block.
pub const STREAM_QUEUE_BYTES: usize = 64 * 1024;

/// How a loop is told that a stream has something for it: its mailbox,
/// its waker, and the stream's connection and id.
pub(crate) struct Notify {
    pub(crate) mail: crossbeam_channel::Sender<crate::offload::Mail>,
    pub(crate) waker: Arc<mio::Waker>,
    pub(crate) conn: usize,
    pub(crate) id: u64,
}

impl Notify {
    fn send(&self) {
        self.post(crate::offload::Mail::Body { conn: self.conn, id: self.id });
    }

    /// Puts `mail` in the loop's mailbox and wakes the loop.
    pub(crate) fn post(&self, mail: crate::offload::Mail) {
        if self.mail.send(mail).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// How the producer's side ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// [`BodyWriter::finish`]: the body is whole.
    Finished,
    /// Dropped without `finish` (a panic, an early return): the client
    /// must not take what it got for the whole body.
    Aborted,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    queued: usize,
    end: Option<End>,
    /// The loop's side is gone: the connection closed, or the response
    /// has no body (HEAD, 204, 304) or was never sent.
    closed: bool,
    /// Set once the loop has taken the stream.
    notify: Option<Notify>,
    /// Whether the loop was told of bytes it has not taken yet (one wake
    /// per batch of writes, not per write).
    notified: bool,
}

struct Channel {
    state: Mutex<State>,
    /// Signalled when the loop took bytes or went away.
    room: Condvar,
    /// The thread that made the stream (a loop's, usually): its writes
    /// never wait, since the loop could then never take the bytes.
    maker: ThreadId,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single assignment or push: a panic while the
        // lock was held leaves consistent state.
        crate::shared::lock(&self.state)
    }
}

/// The body of a streamed response, for the thread producing it. Writes
/// block while the client is slow (the connection's socket is the
/// backpressure) and fail with `BrokenPipe` once the client is gone or the
/// response has no body (HEAD, 204, 304). Call [`finish`](Self::finish)
/// at the end: a writer dropped without it (by a panic, say) cuts the
/// response short, so that the client cannot mistake part of a body for
/// all of it.
///
/// Made by [`Response::stream`](crate::Response::stream) and
/// [`Response::stream_sized`](crate::Response::stream_sized); move it to
/// another thread (or use [`Response::stream_with`](crate::Response::stream_with)
/// to run the producer on the offload pool). Writing on the loop's own
/// thread never blocks: past the queue's capacity it fails with
/// `WouldBlock`.
pub struct BodyWriter {
    channel: Arc<Channel>,
    ended: bool,
}

impl std::fmt::Debug for BodyWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyWriter").field("ended", &self.ended).finish()
    }
}

impl BodyWriter {
    /// Ends the body. `BrokenPipe` if the client went away first (nothing
    /// more would reach it either way).
    pub fn finish(mut self) -> io::Result<()> {
        self.end(End::Finished)
    }

    fn end(&mut self, end: End) -> io::Result<()> {
        self.ended = true;
        let mut state = self.channel.lock();
        if state.closed {
            return Err(broken_pipe());
        }
        state.end = Some(end);
        if let Some(notify) = &state.notify {
            notify.send();
        }
        Ok(())
    }
}

impl io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut state = self.channel.lock();
        loop {
            if state.closed || state.end.is_some() {
                return Err(broken_pipe());
            }
            if state.queued < STREAM_QUEUE_BYTES {
                break;
            }
            if thread::current().id() == self.channel.maker {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "a stream's queue is full and this is the thread that must empty it: \
                     write from another thread",
                ));
            }
            state = self.channel.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        // Only as much as fits: memory stays bounded however large the
        // write (`write_all` comes back for the rest).
        let taken = buf.len().min(STREAM_QUEUE_BYTES - state.queued);
        state.chunks.push_back(buf[..taken].to_vec());
        state.queued += taken;
        if !state.notified && state.notify.is_some() {
            state.notified = true;
            if let Some(notify) = &state.notify {
                notify.send();
            }
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.end(End::Aborted);
        }
    }
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client is gone or the response has no body")
}

/// The loop's side of a stream: dropping it tells the producer that
/// nobody will read what it writes.
pub(crate) struct StreamBody {
    channel: Arc<Channel>,
    /// `Content-Length`, when the producer said how much it will write.
    pub(crate) length: Option<u64>,
}

impl std::fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBody").field("length", &self.length).finish()
    }
}

/// What [`StreamBody::take`] found: how many bytes (maybe none yet), and
/// the end once the producer has ended and every byte was taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) bytes: usize,
    pub(crate) end: Option<End>,
}

impl StreamBody {
    /// A stream and its writer; `length` is the `Content-Length` to send.
    pub(crate) fn new(length: Option<u64>) -> (StreamBody, BodyWriter) {
        let channel = Arc::new(Channel {
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            maker: thread::current().id(),
        });
        (StreamBody { channel: channel.clone(), length }, BodyWriter { channel, ended: false })
    }

    /// Tells the loop behind `notify` of what the producer writes from now
    /// on, and of what it wrote already.
    pub(crate) fn attach(&self, notify: Notify) {
        let mut state = self.channel.lock();
        if !state.chunks.is_empty() || state.end.is_some() {
            state.notified = true;
            notify.send();
        }
        state.notify = Some(notify);
    }

    /// Moves up to `limit` queued bytes to `out` through `frame` (which
    /// gets each chunk), waking the producer if it waits for room.
    pub(crate) fn take(&self, limit: usize, mut frame: impl FnMut(&[u8])) -> Taken {
        let mut state = self.channel.lock();
        let mut taken = 0;
        while taken < limit {
            let Some(chunk) = state.chunks.pop_front() else { break };
            state.queued -= chunk.len();
            taken += chunk.len();
            frame(&chunk);
        }
        // Told again when more comes after this.
        state.notified = !state.chunks.is_empty();
        let end = if state.chunks.is_empty() { state.end } else { None };
        drop(state);
        if taken > 0 {
            self.channel.room.notify_all();
        }
        Taken { bytes: taken, end }
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        let mut state = self.channel.lock();
        state.closed = true;
        state.chunks.clear();
        state.queued = 0;
        drop(state);
        self.channel.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_write_takes_only_what_fits_and_a_full_queue_fails_on_its_own_thread() {
        let (body, mut writer) = StreamBody::new(None);
        let big = vec![7u8; STREAM_QUEUE_BYTES + 10];
        assert_eq!(writer.write(&big).unwrap(), STREAM_QUEUE_BYTES);
        let err = writer.write(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "the loop's thread never waits");
        let mut got = 0;
        assert_eq!(
            body.take(usize::MAX, |chunk| got += chunk.len()),
            Taken { bytes: STREAM_QUEUE_BYTES, end: None }
        );
        assert_eq!(got, STREAM_QUEUE_BYTES);
        writer.finish().unwrap();
        assert_eq!(body.take(usize::MAX, |_| {}), Taken { bytes: 0, end: Some(End::Finished) });
    }

    #[test]
    fn a_producer_waiting_for_room_gets_broken_pipe_when_the_loop_lets_go() {
        let (body, mut writer) = StreamBody::new(None);
        let producer = thread::spawn(move || -> io::Result<()> {
            loop {
                writer.write_all(&[1u8; 4096])?;
            }
        });
        // Waits until the producer filled the queue (it then blocks).
        loop {
            if body.channel.lock().queued >= STREAM_QUEUE_BYTES {
                break;
            }
            thread::yield_now();
        }
        drop(body);
        let err = producer.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_writer_dropped_without_finish_aborts() {
        let (body, writer) = StreamBody::new(None);
        drop(writer);
        assert_eq!(body.take(usize::MAX, |_| {}), Taken { bytes: 0, end: Some(End::Aborted) });
    }
}
