//! Streamed request bodies: the handler reads the body through a
//! [`BodyReader`] on any thread while the connection's loop fills a bounded
//! queue from the socket, reading the socket only as fast as the reader
//! empties the queue.
//!
//! The queue is the backpressure, the mirror of `http::stream`. A full
//! queue stops the loop reading this connection; the client's bytes then
//! wait in the kernel, whose full receive window stops the client. The
//! reader wakes the loop once it has made room for half a queue, and when
//! it is dropped. Memory per upload: [`UPLOAD_QUEUE_BYTES`] here plus at
//! most one socket read held back in the connection's buffer.

use std::cell::Cell;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use super::body::ChunkedDecoder;
use super::stream::Notify;
use super::Reject;

/// Body bytes an upload's queue holds before the loop stops reading its
/// socket.
pub const UPLOAD_QUEUE_BYTES: usize = 64 * 1024;

/// How a request's body is received, decided from its head before any of
/// the body is read (see [`Service::body_policy`](crate::Service::body_policy)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyPolicy {
    /// Read the whole body into memory before the handler runs, up to this
    /// many bytes. A larger `Content-Length` is answered 413 before the
    /// body is read (so before `100 Continue`), a chunked body growing past
    /// it as soon as it does. The server's default, with
    /// [`Limits::max_body_bytes`](crate::Limits::max_body_bytes).
    Buffer(usize),
    /// Take no body: a request with one is answered 413 before it is read.
    Refuse,
    /// Run the handler as soon as the head is in, and let it read the body
    /// through [`Request::body_reader`](crate::Request::body_reader), up to
    /// this many bytes (`u64::MAX`: no limit). A larger `Content-Length` is
    /// answered 413 before the handler runs; a chunked body growing past it
    /// fails the reader.
    Stream(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Every byte of the body was queued.
    Whole,
    /// The body will not be whole: the reader gets this error once it has
    /// read what was queued before it.
    Failed(io::ErrorKind, &'static str),
}

#[derive(Default)]
struct State {
    /// Queued bytes are `buf[read..]`.
    buf: Vec<u8>,
    read: usize,
    end: Option<End>,
    /// The reader was dropped: nobody will read what is queued.
    reader_gone: bool,
    /// The loop stopped reading for want of room: wake it when there is.
    loop_waiting: bool,
    /// The reader waits for bytes: signal `data` when some come.
    reader_waiting: bool,
}

impl State {
    fn queued(&self) -> usize {
        self.buf.len() - self.read
    }
}

struct Channel {
    state: Mutex<State>,
    /// Signalled when bytes were queued or the body ended.
    data: Condvar,
    /// Tells the loop that the reader made room or went away.
    notify: Notify,
    /// The thread that made the upload (its loop's): a read there never
    /// waits, since the loop could then never fill the queue.
    maker: ThreadId,
    /// How long a read waits for the client's next bytes.
    idle_timeout: Duration,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::shared::lock(&self.state)
    }
}

/// The body of a request on a [`BodyPolicy::Stream`] route, for the thread
/// that consumes it (take it with
/// [`Request::body_reader`](crate::Request::body_reader) and move it into
/// offloaded work, say).
///
/// A read blocks until the client's next bytes arrive and returns `Ok(0)`
/// at the end of the body. It fails with `UnexpectedEof` or
/// `ConnectionAborted` when the client goes away first, `InvalidData` when
/// the chunked framing is broken, `InvalidInput` past the route's limit,
/// and `TimedOut` when nothing arrives within the server's stream idle
/// timeout. A read on the loop's own thread never blocks: with nothing
/// queued it fails with `WouldBlock`.
///
/// Dropping the reader before the end tells the server that the rest of
/// the body will not be read: the connection closes after the response
/// (which says `Connection: close` when the reader was dropped before the
/// handler returned).
pub struct BodyReader {
    channel: Arc<Channel>,
    length: Option<u64>,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader").field("length", &self.length).finish()
    }
}

impl BodyReader {
    /// The body's `Content-Length`; `None` for a chunked body.
    pub fn length(&self) -> Option<u64> {
        self.length
    }
}

impl io::Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let channel = &*self.channel;
        let mut state = channel.lock();
        let mut deadline = None;
        loop {
            let queued = state.queued();
            if queued > 0 {
                let n = queued.min(out.len());
                out[..n].copy_from_slice(&state.buf[state.read..state.read + n]);
                state.read += n;
                if state.read == state.buf.len() {
                    state.buf.clear();
                    state.read = 0;
                }
                // Woken once there is room for half a queue: one wake-up
                // per 32 KiB, not one per read.
                let wake = state.loop_waiting && state.queued() <= UPLOAD_QUEUE_BYTES / 2;
                if wake {
                    state.loop_waiting = false;
                }
                drop(state);
                if wake {
                    channel.notify.post(self.mail());
                }
                return Ok(n);
            }
            match state.end {
                Some(End::Whole) => return Ok(0),
                Some(End::Failed(kind, why)) => return Err(io::Error::new(kind, why)),
                None => {}
            }
            if thread::current().id() == channel.maker {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "no body bytes are queued and this is the thread that must queue them: \
                     read from another thread",
                ));
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + channel.idle_timeout);
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no body bytes arrived within the stream idle timeout",
                ));
            };
            state.reader_waiting = true;
            state = match channel.data.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
            state.reader_waiting = false;
        }
    }
}

impl BodyReader {
    fn mail(&self) -> crate::offload::Mail {
        let notify = &self.channel.notify;
        crate::offload::Mail::Upload { conn: notify.conn, id: notify.id }
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        let mut state = self.channel.lock();
        state.reader_gone = true;
        state.buf = Vec::new();
        state.read = 0;
        let unfinished = state.end.is_none();
        drop(state);
        if unfinished {
            self.channel.notify.post(self.mail());
        }
    }
}

/// Where a [`BodyReader`] waits for the handler to take it: lent to the
/// request, so that `Request::body_reader` can take it through `&Request`.
pub(crate) struct ReaderSlot(Cell<Option<BodyReader>>);

impl std::fmt::Debug for ReaderSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaderSlot")
    }
}

impl ReaderSlot {
    pub(crate) fn new(reader: BodyReader) -> ReaderSlot {
        ReaderSlot(Cell::new(Some(reader)))
    }

    pub(crate) fn take(&self) -> Option<BodyReader> {
        self.0.take()
    }

    /// The reader is still here: the handler did not take it.
    pub(crate) fn holds_reader(&self) -> bool {
        let reader = self.0.take();
        let held = reader.is_some();
        self.0.set(reader);
        held
    }
}

/// How the rest of the body is framed.
#[derive(Debug)]
enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
}

/// What [`Upload::feed`] did with the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// The body is whole; the rest of the input is the next request.
    Whole,
    /// Every byte given was taken; the body goes on.
    More,
    /// The queue is full: the loop stops reading until the reader wakes it.
    Full,
    /// The reader is gone: the rest of the body will not be read.
    ReaderGone,
    /// The framing is broken or over the limit; the reader has been told.
    Failed(Reject),
}

/// The loop's side of an upload. Dropping it before the body is whole
/// fails the reader's next read with `ConnectionAborted`.
pub(crate) struct Upload {
    channel: Arc<Channel>,
    framing: Framing,
    /// Decoded bytes a chunked body may have.
    limit: u64,
    /// The loop stopped reading for want of room (it waits for mail).
    pub(crate) blocked: bool,
    /// The response said close: close once the body is in.
    pub(crate) close_after: bool,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("id", &self.id()).field("blocked", &self.blocked).finish()
    }
}

impl Upload {
    /// An upload of a body of `length` bytes (`None`: chunked) and its
    /// reader; the reader wakes the loop through `notify`.
    pub(crate) fn new(
        length: Option<u64>,
        limit: u64,
        notify: Notify,
        idle_timeout: Duration,
    ) -> (Upload, BodyReader) {
        let channel = Arc::new(Channel {
            state: Mutex::new(State::default()),
            data: Condvar::new(),
            notify,
            maker: thread::current().id(),
            idle_timeout,
        });
        let framing = match length {
            Some(length) => Framing::Length(length),
            None => Framing::Chunked(Box::default()),
        };
        let upload =
            Upload { channel: channel.clone(), framing, limit, blocked: false, close_after: false };
        (upload, BodyReader { channel, length })
    }

    /// The id its mail comes under.
    pub(crate) fn id(&self) -> u64 {
        self.channel.notify.id
    }

    /// Whether the reader was dropped.
    pub(crate) fn reader_gone(&self) -> bool {
        self.channel.lock().reader_gone
    }

    /// Queues what of `input` fits; returns how many bytes were consumed.
    pub(crate) fn feed(&mut self, input: &[u8], max_trailer_bytes: usize) -> (usize, Fed) {
        let channel = &*self.channel;
        let mut state = channel.lock();
        if state.reader_gone {
            return (0, Fed::ReaderGone);
        }
        let before = state.queued();
        let mut consumed = 0;
        let fed = loop {
            let room = UPLOAD_QUEUE_BYTES - state.queued();
            if room == 0 {
                state.loop_waiting = true;
                self.blocked = true;
                break Fed::Full;
            }
            if consumed == input.len() {
                break Fed::More;
            }
            let rest = &input[consumed..];
            if state.read > 0 && state.buf.len() + rest.len().min(room) > UPLOAD_QUEUE_BYTES {
                // Queued bytes move to the front, so that the buffer never
                // outgrows the queue (a reader that keeps up empties it,
                // and nothing moves).
                let read = state.read;
                state.buf.drain(..read);
                state.read = 0;
            }
            match &mut self.framing {
                Framing::Length(left) => {
                    let n = rest.len().min(room).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    state.buf.extend_from_slice(&rest[..n]);
                    consumed += n;
                    *left -= n as u64;
                    if *left == 0 {
                        break Fed::Whole;
                    }
                }
                Framing::Chunked(decoder) => {
                    // Decoded bytes are never more than the bytes decoded
                    // from, so a window the size of the room cannot overfill.
                    let window = &rest[..rest.len().min(room)];
                    let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
                    match decoder.decode(window, &mut state.buf, limit, max_trailer_bytes) {
                        Ok(progress) => {
                            consumed += progress.consumed;
                            if progress.done {
                                break Fed::Whole;
                            }
                        }
                        Err(reject) => {
                            let kind = if reject.status == 413 {
                                io::ErrorKind::InvalidInput
                            } else {
                                io::ErrorKind::InvalidData
                            };
                            state.end = Some(End::Failed(kind, reject.why));
                            break Fed::Failed(reject);
                        }
                    }
                }
            }
        };
        if fed == Fed::Whole {
            state.end = Some(End::Whole);
        }
        let wake = state.reader_waiting && (state.queued() > before || state.end.is_some());
        drop(state);
        if wake {
            channel.data.notify_one();
        }
        (consumed, fed)
    }

    /// Ends the body short: the reader gets `kind` after what is queued.
    pub(crate) fn fail(&self, kind: io::ErrorKind, why: &'static str) {
        let mut state = self.channel.lock();
        if state.end.is_none() {
            state.end = Some(End::Failed(kind, why));
        }
        drop(state);
        self.channel.data.notify_one();
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.fail(io::ErrorKind::ConnectionAborted, "the connection closed before the body ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair(
        length: Option<u64>,
        limit: u64,
    ) -> (Upload, BodyReader, crossbeam_channel::Receiver<crate::offload::Mail>) {
        let (mail, mailbox) = crossbeam_channel::unbounded();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let notify = Notify { mail, waker, conn: 3, id: 9 };
        let (upload, reader) = Upload::new(length, limit, notify, Duration::from_secs(30));
        (upload, reader, mailbox)
    }

    #[test]
    fn a_sized_body_is_queued_up_to_its_length_and_then_is_whole() {
        let (mut upload, mut reader, _mailbox) = pair(Some(5), u64::MAX);
        assert_eq!(upload.feed(b"hel", 1024), (3, Fed::More));
        assert_eq!(upload.feed(b"loGET /", 1024), (2, Fed::Whole), "the rest is the next request");
        let reading = thread::spawn(move || {
            let mut body = Vec::new();
            reader.read_to_end(&mut body).map(|_| body)
        });
        assert_eq!(reading.join().unwrap().unwrap(), b"hello");
    }

    #[test]
    fn a_full_queue_stops_the_loop_until_the_reader_makes_room() {
        let (mut upload, mut reader, mailbox) = pair(None, u64::MAX);
        let chunk = format!(
            "{:x}\r\n{}\r\n",
            UPLOAD_QUEUE_BYTES + 100,
            "a".repeat(UPLOAD_QUEUE_BYTES + 100)
        );
        let (consumed, fed) = upload.feed(chunk.as_bytes(), 1024);
        assert_eq!(fed, Fed::Full);
        assert!(upload.blocked);
        assert!(consumed < chunk.len());
        assert!(mailbox.try_recv().is_err(), "no room was made yet");
        // Reads that leave more than half a queue do not wake the loop.
        let reading = thread::spawn(move || {
            let mut got = vec![0; UPLOAD_QUEUE_BYTES / 2 + 1];
            reader.read_exact(&mut got).map(|_| reader)
        });
        let reader = reading.join().unwrap().unwrap();
        assert!(matches!(mailbox.try_recv(), Ok(crate::offload::Mail::Upload { conn: 3, id: 9 })));
        upload.blocked = false;
        let (more, fed) = upload.feed(&chunk.as_bytes()[consumed..], 1024);
        assert_eq!((consumed + more, fed), (chunk.len(), Fed::More));
        drop(reader);
        assert!(upload.reader_gone());
        assert_eq!(upload.feed(b"0\r\n\r\n", 1024), (0, Fed::ReaderGone));
    }

    #[test]
    fn broken_framing_and_a_dropped_upload_fail_the_reader() {
        let (mut upload, mut reader, _mailbox) = pair(None, 4);
        assert!(
            matches!(upload.feed(b"5\r\nhello\r\n", 1024), (_, Fed::Failed(r)) if r.status == 413)
        );
        let err = thread::spawn(move || reader.read(&mut [0; 8])).join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        let (mut upload, mut reader, _mailbox) = pair(Some(10), u64::MAX);
        upload.feed(b"abc", 1024);
        drop(upload);
        let reading = thread::spawn(move || {
            let mut got = [0; 8];
            let n = reader.read(&mut got).unwrap();
            (got[..n].to_vec(), reader.read(&mut got).unwrap_err().kind())
        });
        let (got, err) = reading.join().unwrap();
        assert_eq!(got, b"abc", "what was queued is read first");
        assert_eq!(err, io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn a_read_on_the_loops_thread_never_waits() {
        let (_upload, mut reader, _mailbox) = pair(Some(10), u64::MAX);
        assert_eq!(reader.read(&mut [0; 4]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
