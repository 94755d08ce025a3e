//! A floor under the pace of request bodies: each window of `UPLOAD_WINDOW_SECONDS` must bring
//! `UPLOAD_MIN_BYTES_PER_SECOND` × the window, or the body ends in an error ([`TooSlow`]) and the
//! upload is refused with 408. A client that trickles a byte a second, or sends nothing at all,
//! holds its connection and its upload slot for one window at most.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

/// Why a body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the upload arrived too slowly: less than {min} bytes in {window:?}")]
pub struct TooSlow {
    pub min: u64,
    pub window: Duration,
}

/// A body that fails when a window passes with too few bytes.
pub struct Paced {
    inner: Body,
    window: Duration,
    min: u64,
    /// Bytes in the current window.
    bytes: u64,
    deadline: Pin<Box<Sleep>>,
}

impl Paced {
    pub fn new(inner: Body, window: Duration, min_bytes_per_second: u64) -> Self {
        Self {
            inner,
            window,
            min: min_bytes_per_second.saturating_mul(window.as_secs().max(1)),
            bytes: 0,
            deadline: Box::pin(tokio::time::sleep(window)),
        }
    }

    /// At the end of a window: an error when it brought too little, else a new window.
    fn window_ended(&mut self) -> Result<(), TooSlow> {
        if self.bytes < self.min {
            return Err(TooSlow {
                min: self.min,
                window: self.window,
            });
        }
        self.bytes = 0;
        let next = Instant::now() + self.window;
        self.deadline.as_mut().reset(next);
        Ok(())
    }
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.deadline.is_elapsed() {
                    if let Err(e) = this.window_ended() {
                        return Poll::Ready(Some(Err(axum::Error::new(e))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                // Nothing now: wake up at the end of the window to judge it.
                while this.deadline.as_mut().poll(cx).is_ready() {
                    if let Err(e) = this.window_ended() {
                        return Poll::Ready(Some(Err(axum::Error::new(e))));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a request's body in [`Paced`].
pub fn pace(request: Request, window: Duration, min_bytes_per_second: u64) -> Request {
    request.map(|body| Body::new(Paced::new(body, window, min_bytes_per_second)))
}

/// Whether `error` (or what caused it) is a [`TooSlow`].
pub fn too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<TooSlow>() {
            return true;
        }
        next = e.source();
    }
    false
}
