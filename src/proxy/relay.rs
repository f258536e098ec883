//! The response body that relays the upstream's bytes to the client.
//!
//! Bytes pass through as they arrive: no buffering, no re-encoding, no copy.
//! The body owns the token's slot (and the rest of the request's [`Hold`])
//! and gives it back the moment the upstream
//! body ends, fails or times out, or when hyper drops the body because the
//! client went away. Dropping it also drops the upstream response, which
//! closes that connection, so DeepSeek stops generating tokens nobody reads.
//!
//! A failure after the first byte cannot change the status any more. For an
//! event stream the relay appends the format's own error event (chat's
//! `data: {"error": ...}`, Responses' `error` event, Anthropic's
//! `event: error`; never a fabricated ending) and ends; for other bodies it aborts the connection so
//! the client sees a truncated response rather than a complete-looking one.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::future::BoxFuture;
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::hold::Hold;
use crate::access_log::RequestLog;
use crate::formats::Format;
use crate::usage::Tap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Streaming,
    /// The upstream is done: give the slot back, then send `then` (the error
    /// event, if any) and end. The client sees the end only once the slot is
    /// free, so its next request never races the release.
    Releasing {
        then: Option<Bytes>,
    },
    Done,
}

pin_project! {
    #[project = Projection]
    pub struct RelayBody<S> {
        // Dropped (closing the upstream connection) as soon as the relay
        // stops, before the slot is given back.
        upstream: Option<Pin<Box<S>>>,
        #[pin]
        idle: Sleep,
        #[pin]
        deadline: Sleep,
        idle_timeout: Duration,
        format: Format,
        is_event_stream: bool,
        // The last two bytes sent, to close a cut-off event before ours.
        tail: [u8; 2],
        phase: Phase,
        hold: Hold,
        releasing: Option<BoxFuture<'static, ()>>,
        // The last chunk handed to hyper, looked at by the usage tap only
        // when the upstream yields what comes next (or the relay ends).
        // hyper writes buffered chunks to the socket when a poll of this
        // body returns `Pending`, so a chunk is on the wire before the tap
        // sees it whenever DeepSeek is slower than the client, which for a
        // stream is always.
        //
        // It is a copy, in a buffer reused for every chunk: holding the
        // chunk itself would keep alive the upstream connection's whole read
        // buffer (the chunk is a slice of it), so hyper would allocate a new
        // one for every read; that doubled the memory per stream.
        tapped: Vec<u8>,
        tap: Tap,
        log: RequestLog,
    }

    impl<S> PinnedDrop for RelayBody<S> {
        fn drop(this: Pin<&mut Self>) {
            // However the body ends, its usage (or an estimate) is recorded.
            let this = this.project();
            if !this.tapped.is_empty() {
                this.tap.feed(this.tapped);
            }
            this.tap.finish();
            let (usage, estimated) = (this.tap.usage(), this.tap.estimated_completion_tokens());
            this.log.set_usage(usage, estimated);
            // A client that left: give back what is still held (in the background).
            drop(this.hold.release(usage, estimated));
        }
    }
}

impl<S> RelayBody<S> {
    pub fn new(
        format: Format,
        upstream: S,
        idle_timeout: Duration,
        deadline: Instant,
        is_event_stream: bool,
        hold: Hold,
        log: RequestLog,
    ) -> Self {
        Self {
            upstream: Some(Box::pin(upstream)),
            idle: tokio::time::sleep(idle_timeout),
            deadline: tokio::time::sleep_until(deadline),
            idle_timeout,
            format,
            is_event_stream,
            tail: *b"\n\n",
            phase: Phase::Streaming,
            hold,
            releasing: None,
            tapped: Vec::new(),
            tap: Tap::new(format, is_event_stream),
            log,
        }
    }
}

/// Why a relay stopped early.
#[derive(Clone, Copy)]
enum Failure {
    Reset,
    Idle,
    HardCap,
}

impl Failure {
    fn describe(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Failure::Reset => (
                "upstream_failed",
                "upstream_stream_failed",
                "the connection to DeepSeek failed mid-response",
            ),
            Failure::Idle => (
                "timed_out",
                "upstream_idle_timeout",
                "DeepSeek sent nothing for longer than the gateway's timeout",
            ),
            Failure::HardCap => (
                "timed_out",
                "upstream_max_duration",
                "the response took longer than the gateway's maximum request time",
            ),
        }
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, std::io::Error>>>;

impl<S> http_body::Body for RelayBody<S>
where
    S: http_body::Body<Data = Bytes>,
    S::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let mut this = self.project();
        loop {
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Releasing { then } => {
                    if let Some(release) = this.releasing.as_mut() {
                        ready!(release.as_mut().poll(cx));
                        *this.releasing = None;
                    }
                    let then = then.take();
                    *this.phase = Phase::Done;
                    return Poll::Ready(then.map(|event| Ok(Frame::data(event))));
                }
                Phase::Streaming => {}
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                if let Some(abort) = fail(&mut this, Failure::HardCap) {
                    return abort;
                }
                continue;
            }
            let Some(upstream) = this.upstream.as_mut() else {
                release_then(&mut this, None);
                continue;
            };
            match upstream.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers (DeepSeek sends none) are not passed on.
                    let Ok(bytes) = frame.into_data() else {
                        continue;
                    };
                    if bytes.is_empty() {
                        continue;
                    }
                    feed_tapped(&mut this);
                    let next_idle = Instant::now() + *this.idle_timeout;
                    this.idle.as_mut().reset(next_idle);
                    remember_tail(this.tail, &bytes);
                    this.hold.relayed(bytes.len());
                    if !crate::ablation::off(crate::ablation::Part::Tap) {
                        this.tapped.extend_from_slice(&bytes);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream body failed");
                    if let Some(abort) = fail(&mut this, Failure::Reset) {
                        return abort;
                    }
                }
                Poll::Ready(None) => release_then(&mut this, None),
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        if let Some(abort) = fail(&mut this, Failure::Idle) {
                            return abort;
                        }
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }
}

fn remember_tail(tail: &mut [u8; 2], bytes: &[u8]) {
    match bytes {
        [.., a, b] => *tail = [*a, *b],
        [b] => *tail = [tail[1], *b],
        [] => {}
    }
}

/// Closes the upstream, then starts giving the slot back; the body ends
/// (after `then`) once it is free. A new request with the token can thus
/// never overlap an upstream request that is still open.
fn release_then<S>(this: &mut Projection<'_, S>, then: Option<Bytes>) {
    *this.upstream = None;
    *this.releasing = Some(release(this));
    *this.phase = Phase::Releasing { then };
}

/// Shows the tap the last chunk relayed, if it has not seen it yet.
fn feed_tapped<S>(this: &mut Projection<'_, S>) {
    if !this.tapped.is_empty() {
        this.tap.feed(this.tapped);
        this.tapped.clear();
    }
}

/// Gives back what the request holds, charging its quota with the usage the
/// tap read from everything relayed.
fn release<S>(this: &mut Projection<'_, S>) -> BoxFuture<'static, ()> {
    feed_tapped(this);
    this.tap.finish();
    let (usage, estimated) = (this.tap.usage(), this.tap.estimated_completion_tokens());
    this.hold.release(usage, estimated)
}

/// Ends the relay after a failure: records the outcome, then either appends
/// the error event after the slot is free (event streams), or aborts at once
/// (other bodies; the slot is then freed in the background) by returning the
/// error frame to hand to hyper.
fn fail<S>(this: &mut Projection<'_, S>, failure: Failure) -> Option<Polled> {
    let (outcome, code, message) = failure.describe();
    this.log.set_outcome(outcome);
    tracing::warn!(code, "upstream response ended early");
    if !*this.is_event_stream {
        *this.phase = Phase::Done;
        *this.upstream = None;
        // Not waited for: the connection is aborted at once.
        drop(release(this));
        return Some(Poll::Ready(Some(Err(std::io::Error::other(message)))));
    }
    // Close whatever event the upstream left half-written, then add ours.
    let close: &[u8] = match *this.tail {
        [_, b'\n'] if this.tail[0] == b'\n' => b"",
        [_, b'\n'] => b"\n",
        _ => b"\n\n",
    };
    // The tap has seen everything relayed, so the Responses error event is
    // numbered after the last event the client got.
    feed_tapped(this);
    let mut event = close.to_vec();
    event.extend_from_slice(&this.format.stream_error_event(
        code,
        message,
        this.tap.next_sequence(),
    ));
    release_then(this, Some(Bytes::from(event)));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_tracks_the_last_two_bytes_across_chunks() {
        let mut tail = *b"\n\n";
        remember_tail(&mut tail, b"data: x");
        assert_eq!(&tail, b" x");
        remember_tail(&mut tail, b"\n");
        assert_eq!(&tail, b"x\n");
        remember_tail(&mut tail, b"\n");
        assert_eq!(&tail, b"\n\n");
    }
}
