//! A TCP listener whose connections a request handler can sever, so the "dropped connection" fault
//! really closes the socket without a single byte of response.
//!
//! Every accepted stream carries a shared flag; the request sees it through `ConnectInfo`. Once the
//! flag is set the stream refuses to read or write: hyper's attempt to write the response fails, hyper
//! abandons the connection, and the socket is closed with a zero linger, i.e. reset.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub(super) struct SeverableListener {
    inner: TcpListener,
}

impl SeverableListener {
    pub(super) async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            inner: TcpListener::bind(addr).await?,
        })
    }
}

impl Listener for SeverableListener {
    type Io = SeverableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // `TcpListener`'s own impl retries transient accept errors (and backs off on EMFILE).
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        // Small request/response pairs: waiting for Nagle would dominate loopback latency.
        let _ = stream.set_nodelay(true);
        let stream = SeverableStream {
            inner: stream,
            severed: Arc::new(AtomicBool::new(false)),
            reset: false,
        };
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub(super) struct SeverableStream {
    inner: TcpStream,
    severed: Arc<AtomicBool>,
    reset: bool,
}

impl SeverableStream {
    fn check(&mut self) -> io::Result<()> {
        if !self.severed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !self.reset {
            self.reset = true;
            // Zero linger: closing sends RST instead of FIN, like a crashed or killed server.
            let _ = self.inner.set_zero_linger();
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection severed by fault injection",
        ))
    }
}

impl AsyncRead for SeverableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SeverableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The request's handle on its own connection, available as `ConnectInfo<ConnectionHandle>`.
#[derive(Clone)]
pub(super) struct ConnectionHandle {
    severed: Arc<AtomicBool>,
}

impl ConnectionHandle {
    /// Makes the connection fail on its next read or write, so no response is ever sent.
    pub(super) fn sever(&self) {
        self.severed.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, SeverableListener>> for ConnectionHandle {
    fn connect_info(stream: IncomingStream<'_, SeverableListener>) -> Self {
        Self {
            severed: Arc::clone(&stream.io().severed),
        }
    }
}
