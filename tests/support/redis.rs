//! A `redis-server` of its own for a test: a free port, no persistence,
//! stopped when dropped. Panics with what to install when the binary is
//! missing (`.ci/run` installs it), so no test passes without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub url: String,
    /// The same server on a Unix socket.
    pub unix_url: String,
    /// The same server over TLS (`rediss://localhost:…`), with the test
    /// certificate `tests/data/tls/a.cert.pem`.
    pub tls_url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// [`RedisServer::start`] whose TLS port requires a client certificate
    /// issued by `tests/data/tls/client.cert.pem` (itself) when `mtls`.
    pub async fn start_with(mtls: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        // Both held until both are known, so they differ.
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (bind(), bind());
        let port_of = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        let (port, tls_port) = (port_of(&a), port_of(&b));
        drop((a, b));
        let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(dir.path().join("redis.sock"))
            .args(["--tls-port", &tls_port.to_string()])
            .args(["--tls-auth-clients", if mtls { "yes" } else { "no" }])
            .arg("--tls-ca-cert-file")
            .arg(certs.join("client.cert.pem"))
            .arg("--tls-cert-file")
            .arg(certs.join("a.cert.pem"))
            .arg("--tls-key-file")
            .arg(certs.join("a.key.pem"))
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server is needed by this test and could not be started ({e}): \
                     apt-get install redis-server (.ci/run does)"
                )
            });
        let url = format!("redis://127.0.0.1:{port}/0");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unix_url = format!("redis+unix://{}", dir.path().join("redis.sock").display());
        RedisServer {
            child,
            url,
            unix_url,
            tls_url: format!("rediss://localhost:{tls_port}/0"),
            _dir: dir,
        }
    }
}

impl RedisServer {
    /// Stops the server (as a crash would).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
