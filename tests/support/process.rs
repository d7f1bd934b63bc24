//! The real binary as a child process: `gatehouse serve` on two free ports,
//! for the tests of what only the binary does (exit codes, signals,
//! restarts). Used by `tests/cli.rs` and `tests/durability.rs`; like the rest
//! of `support`, it is compiled into every test binary, under the
//! `dead_code` allowance at the top of `mod.rs`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::{client, write_config};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Distinct log file names, so a restart does not overwrite the log of the
/// run before it.
static SPAWNS: AtomicUsize = AtomicUsize::new(0);

/// A running `gatehouse serve`, SIGKILLed when dropped. Its stderr (the log)
/// goes to a file, read back with [`Gatehouse::log`].
pub struct Gatehouse {
    pub child: Child,
    log: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Gatehouse {
    /// Serves `config` (which should name `listen` and `admin`) without
    /// waiting for it: for a process expected to exit.
    pub fn spawn(config: &Path, listen: SocketAddr, admin: SocketAddr) -> Gatehouse {
        Gatehouse::spawn_with::<&str>(config, listen, admin, &[])
    }

    /// [`Gatehouse::spawn`] with `env` added to the environment.
    pub fn spawn_with<V: AsRef<OsStr>>(
        config: &Path,
        listen: SocketAddr,
        admin: SocketAddr,
        env: &[(&str, V)],
    ) -> Gatehouse {
        let n = SPAWNS.fetch_add(1, Ordering::Relaxed);
        let log = config.with_file_name(format!("gatehouse-{n}.log"));
        let child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        Gatehouse {
            child,
            log,
            listen,
            admin,
        }
    }

    /// Writes the test keys and `config(listen, admin)` as `dir/gateway.toml`
    /// (see [`write_config`]) for two free ports, serves it, and waits until
    /// both listeners answer. Another process can take a port between our
    /// probe and the bind: then it retries with new ports.
    pub async fn start(dir: &Path, config: impl Fn(SocketAddr, SocketAddr) -> String) -> Gatehouse {
        Gatehouse::start_with::<&str>(dir, &[], config).await
    }

    /// [`Gatehouse::start`] with `env` added to the environment.
    pub async fn start_with<V: AsRef<OsStr>>(
        dir: &Path,
        env: &[(&str, V)],
        config: impl Fn(SocketAddr, SocketAddr) -> String,
    ) -> Gatehouse {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (listen, admin) = free_addrs();
            let path = write_config(dir, &config(listen, admin));
            let mut gw = Gatehouse::spawn_with(&path, listen, admin, env);
            match gw.ready().await {
                Ok(()) => return gw,
                Err(log) if log.contains("cannot listen") && attempts < 3 => continue,
                Err(log) => panic!("gatehouse did not start:\n{log}"),
            }
        }
    }

    /// Waits until both listeners answer as gatehouse would: the admin
    /// `/healthz` with 200, the proxy with a 404 for a path no route has.
    async fn ready(&mut self) -> Result<(), String> {
        let limit = Duration::from_secs(30);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            let admin = status_of(&self.admin_url("/healthz")).await;
            let main = status_of(&self.url("/__ready_probe")).await;
            if admin == Some(StatusCode::OK) && main == Some(StatusCode::NOT_FOUND) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not serving after {limit:?}:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (`"TERM"`, `"HUP"`, ...) with `kill`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// The exit status, if the process ends within `limit`.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, and the process exits 0.
    pub async fn stop(mut self) {
        self.signal("TERM");
        let status = self
            .exited_within(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{}", self.log()));
        assert_eq!(status.code(), Some(0), "{}", self.log());
    }

    /// SIGKILL: no shutdown code runs at all.
    pub async fn kill_9(mut self) {
        self.signal("KILL");
        let status = self
            .exited_within(Duration::from_secs(10))
            .await
            .expect("a SIGKILLed process ends");
        assert_eq!(status.signal(), Some(9), "{status}");
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two distinct ports nothing listens on right now (for `listen` and
/// `admin_listen`): both are held until both are known, or the kernel could
/// hand out the same port twice.
pub fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// The status of `GET url`, or `None` when nothing answers within 5 s.
pub async fn status_of(url: &str) -> Option<StatusCode> {
    let req = Request::get(url).body(Full::<Bytes>::default()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), client().request(req)).await {
        Ok(Ok(rsp)) => Some(rsp.status()),
        _ => None,
    }
}

/// The environment under which the process trusts only the test
/// certificate `name` (`tests/data/tls`) as its system's roots:
/// `SSL_CERT_FILE` names it, `SSL_CERT_DIR` an empty folder made in `dir`
/// (that is read besides the file when set).
pub fn trusting_only(dir: &Path, name: &str) -> [(&'static str, PathBuf); 2] {
    let no_dir = dir.join("no-roots");
    std::fs::create_dir_all(&no_dir).unwrap();
    let cert = super::tls_dir().join(format!("{name}.cert.pem"));
    [("SSL_CERT_FILE", cert), ("SSL_CERT_DIR", no_dir)]
}

/// `config`, written for an in-process gateway (`[server]` then
/// `admin_listen = ""`), listening on `listen` with its admin on `admin`.
pub fn on_ports(config: &str, listen: SocketAddr, admin: SocketAddr) -> String {
    let ports = format!("[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"");
    assert!(config.contains("[server]\nadmin_listen = \"\""), "{config}");
    config.replace("[server]\nadmin_listen = \"\"", &ports)
}
