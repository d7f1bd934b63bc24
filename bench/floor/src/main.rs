//! `floor LISTEN UPSTREAM`: proxies every request to UPSTREAM over a LIFO
//! pool of keep-alive connections, with one tokio worker thread. Nothing
//! else: the reference for what hyper itself costs per request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

struct Pool {
    idle: Mutex<VecDeque<SendRequest<Incoming>>>,
    upstream: String,
}

impl Pool {
    fn checkin(&self, sender: SendRequest<Incoming>) {
        self.idle.lock().unwrap().push_back(sender);
    }

    async fn get(&self) -> std::io::Result<SendRequest<Incoming>> {
        loop {
            let idle = self.idle.lock().unwrap().pop_back();
            match idle {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => break,
            }
        }
        let tcp = TcpStream::connect(&self.upstream).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// The upstream's response body; its connection goes back to the pool at the end.
struct Pooled {
    inner: Incoming,
    back: Option<(SendRequest<Incoming>, Arc<Pool>)>,
}

impl Pooled {
    fn release_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some((sender, pool)) = self.back.take()
        {
            pool.checkin(sender);
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some((sender, pool)) = self.back.take() {
                    pool.checkin(sender);
                }
            }
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn proxy(
    req: http::Request<Incoming>,
    pool: Arc<Pool>,
) -> Result<http::Response<Pooled>, std::io::Error> {
    let (mut parts, body) = req.into_parts();
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => http::Uri::from(pq.clone()),
        None => http::Uri::from_static("/"),
    };
    let mut sender = pool.get().await?;
    let rsp = sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = rsp.into_parts();
    let mut body = Pooled {
        inner: body,
        back: Some((sender, pool)),
    };
    body.release_if_done();
    Ok(http::Response::from_parts(parts, body))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: floor LISTEN UPSTREAM (e.g. 127.0.0.1:18099 127.0.0.1:18080)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let pool = Arc::new(Pool {
            idle: Mutex::new(VecDeque::new()),
            upstream,
        });
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let pool = Arc::clone(&pool);
                    async move {
                        Ok::<_, Infallible>(match proxy(req, pool).await {
                            Ok(rsp) => rsp.map(Either::Left),
                            Err(e) => {
                                eprintln!("upstream: {e}");
                                let mut rsp = http::Response::new(Either::Right(Empty::new()));
                                *rsp.status_mut() = http::StatusCode::BAD_GATEWAY;
                                rsp
                            }
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
