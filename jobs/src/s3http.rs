//! The HTTP client for S3 stores reached over plain `http://` (Garage and MinIO on a private
//! network): kept-alive connections that acknowledge what they receive at once.
//!
//! Garage (2.5) accepts connections without `TCP_NODELAY`. It writes a response's headers and
//! then its body; Nagle's algorithm holds the body's last, partial segment until the headers are
//! acknowledged, and a client in Linux's delayed-ACK mode (which a kept-alive, request-response
//! connection is in) acknowledges only after about 40 ms. So every GET of an object of about
//! 16 KB to 1 MB took 40 ms on a reused connection, against a millisecond or two on a fresh one.
//! Setting `TCP_QUICKACK` before each read makes our side acknowledge at once, which releases the
//! held segment: the stall is gone and connections can be reused (measured in
//! `docs/operations.md`). Linux clears the flag by itself, hence once per read.
//!
//! `https://` endpoints (AWS S3, or any store behind TLS) keep the SDK's own client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// A client for plain-HTTP S3 endpoints whose connections acknowledge every read at once.
pub fn quick_ack_client(connect_timeout: Duration) -> SharedHttpClient {
    let mut tcp = TcpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.enforce_http(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(QuickAckConnector(tcp));
    SharedHttpClient::new(QuickAckClient(client))
}

#[derive(Clone, Debug)]
struct QuickAckClient(Client<QuickAckConnector, SdkBody>);

impl HttpClient for QuickAckClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for QuickAckClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(err) => return HttpConnectorFuture::ready(Err(ConnectorError::user(err.into()))),
        };
        let response = self.0.request(request);
        HttpConnectorFuture::new(async move {
            match response.await {
                Ok(response) => HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|err| ConnectorError::other(err.into(), None)),
                Err(err) => Err(classify(err)),
            }
        })
    }
}

/// Connection failures, resets and timeouts are worth another attempt (the SDK's retry policy
/// decides); a request we could not even send is ours to fix.
fn classify(err: hyper_util::client::legacy::Error) -> ConnectorError {
    let hyper = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<hyper::Error>());
    if let Some(hyper) = hyper {
        if hyper.is_timeout() {
            return ConnectorError::timeout(err.into());
        }
        if hyper.is_user() {
            return ConnectorError::user(err.into());
        }
    }
    if err.is_connect()
        || hyper.is_some_and(|h| h.is_closed() || h.is_canceled() || h.is_incomplete_message())
        || source_is_io(&err)
    {
        return ConnectorError::io(err.into());
    }
    ConnectorError::other(err.into(), None)
}

fn source_is_io(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Hyper's TCP connector, with every stream wrapped in [`QuickAck`].
#[derive(Clone, Debug)]
struct QuickAckConnector(TcpConnector);

impl tower_service::Service<Uri> for QuickAckConnector {
    type Response = QuickAck;
    type Error = <TcpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(QuickAck(connecting.await?)) })
    }
}

/// A TCP stream that sets `TCP_QUICKACK` before each read.
#[derive(Debug)]
struct QuickAck(TokioIo<TcpStream>);

impl QuickAck {
    fn ack_at_once(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor, and a pointer to an int that outlives the call.
        // A failure only means the delayed ACK stays: nothing to handle.
        unsafe {
            libc::setsockopt(
                self.0.inner().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl Read for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.ack_at_once();
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
