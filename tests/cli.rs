//! The real binary (SPEC §1, §5): `check` exit codes and `FILE:LINE:COL`
//! diagnostics, `serve` refusing a bad config, serving, admin health,
//! SIGTERM draining and SIGHUP reloads.
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use jsonwebtoken::Algorithm;
use support::process::{BIN, Gatehouse, free_addrs, status_of};
use support::*;

/// An environment variable no test machine sets.
const UNSET_VAR: &str = "GATEHOUSE_TEST_SURELY_UNSET_9F2C";

/// A valid config; the `check` cases below break one line of it, so the
/// expected positions can be read off these line numbers.
const VALID: &str = r#"[server]
listen = "127.0.0.1:8080"
admin_listen = ""

[[keys]]
id = "hs"
algorithm = "HS256"
secret_file = "hs.secret"

[[upstreams]]
name = "api"
targets = ["builtin:echo"]

[[routes]]
path_prefix = "/api/"
upstream = "api"
"#;

/// `VALID` with the line that is exactly `line` replaced by `with`.
fn valid_but(line: &str, with: &str) -> String {
    assert_eq!(VALID.lines().filter(|l| *l == line).count(), 1, "{line}");
    VALID
        .lines()
        .map(|l| if l == line { with } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `gatehouse check -c <dir>/gateway.toml` on `config`.
async fn check(dir: &Path, config: &str) -> (PathBuf, Output) {
    let path = write_config(dir, config);
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"]).arg(&path).env_remove(UNSET_VAR);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the binary runs");
    let out = Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (path, out)
}

/// Checks that `config` is refused with exactly `expected` diagnostics,
/// each `(line, col, part of the message)`.
async fn assert_refused(config: &str, expected: &[(usize, usize, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.secret"), "tooshort\n").unwrap();
    let (path, out) = check(dir.path(), config).await;
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    assert_eq!(out.stdout, "", "nothing on stdout for an invalid config");
    let file = path.display().to_string();
    let diags: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")) && !l.ends_with(": invalid config"))
        .collect();
    assert_eq!(diags.len(), expected.len(), "diagnostics:\n{}", out.stderr);
    for (diag, (line, col, msg)) in diags.iter().zip(expected) {
        let prefix = format!("{file}:{line}:{col}: ");
        assert!(
            diag.starts_with(&prefix),
            "want `{prefix}...`, got:\n{diag}"
        );
        assert!(diag.contains(msg), "want `{msg}` in:\n{diag}");
    }
}

// === check ===

#[tokio::test]
async fn check_on_a_valid_config_prints_a_summary_exits_0_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = check(dir.path(), VALID).await;
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    let summary = out.stdout.trim_end();
    assert!(
        summary.starts_with(&format!("{}: ok", path.display())),
        "{summary}"
    );
    for part in ["127.0.0.1:8080", "1 upstream(s)", "1 route(s)"] {
        assert!(summary.contains(part), "want `{part}` in: {summary}");
    }
    // No key signs, so `serve` would generate one under [state] path; `check` must not.
    assert!(
        !dir.path().join("data").exists(),
        "check wrote the state dir"
    );
}

#[tokio::test]
async fn check_reports_an_unknown_key_where_it_is() {
    let config = valid_but(r#"admin_listen = """#, r#"admin_lisen = """#);
    assert_refused(&config, &[(3, 1, "unknown field `admin_lisen`")]).await;
    let config = valid_but(r#"upstream = "api""#, r#"upstrem = "api""#);
    assert_refused(&config, &[(16, 1, "unknown field `upstrem`")]).await;
}

#[tokio::test]
async fn check_reports_a_bad_duration_at_its_value() {
    let config = valid_but(
        r#"listen = "127.0.0.1:8080""#,
        r#"request_timeout = "30 seconds""#,
    );
    assert_refused(&config, &[(2, 19, "duration `30 seconds`")]).await;
}

#[tokio::test]
async fn check_reports_a_route_naming_a_missing_upstream() {
    let config = format!("{VALID}\n[[routes]]\npath_prefix = \"/b/\"\nupstream = \"nope\"\n");
    assert_refused(&config, &[(20, 12, "unknown upstream `nope`")]).await;
}

#[tokio::test]
async fn check_reports_an_upstream_no_route_uses() {
    let config =
        format!("{VALID}\n[[upstreams]]\nname = \"spare\"\ntargets = [\"http://127.0.0.1:9\"]\n");
    assert_refused(
        &config,
        &[(19, 8, "upstream `spare` is not used by any route")],
    )
    .await;
}

#[tokio::test]
async fn check_reports_every_problem_in_file_order() {
    // Renaming the only route's upstream breaks two things at once.
    let config = valid_but(r#"upstream = "api""#, r#"upstream = "apii""#);
    assert_refused(
        &config,
        &[
            (11, 8, "upstream `api` is not used by any route"),
            (16, 12, "unknown upstream `apii`"),
        ],
    )
    .await;
}

#[tokio::test]
async fn check_reports_a_missing_key_file_at_its_path() {
    let config = valid_but(r#"algorithm = "HS256""#, r#"algorithm = "RS256""#);
    let config = config.replace(
        r#"secret_file = "hs.secret""#,
        r#"public_key = "missing.pem""#,
    );
    assert_refused(&config, &[(8, 14, "missing.pem")]).await;
    let config = valid_but(
        r#"secret_file = "hs.secret""#,
        r#"secret_file = "missing.secret""#,
    );
    assert_refused(&config, &[(8, 15, "cannot read")]).await;
}

#[tokio::test]
async fn check_reports_a_secret_env_that_is_not_set() {
    let config = valid_but(
        r#"secret_file = "hs.secret""#,
        &format!(r#"secret_env = "{UNSET_VAR}""#),
    );
    assert_refused(
        &config,
        &[(
            8,
            14,
            &format!("environment variable `{UNSET_VAR}` is not set"),
        )],
    )
    .await;
}

#[tokio::test]
async fn check_reports_a_secret_shorter_than_32_bytes() {
    let config = valid_but(
        r#"secret_file = "hs.secret""#,
        r#"secret_file = "short.secret""#,
    );
    // The trailing newline is not part of the secret: 8 bytes.
    assert_refused(&config, &[(8, 15, "the secret is 8 bytes")]).await;
}

#[tokio::test]
async fn check_reports_invalid_toml_syntax_where_it_is() {
    let config = valid_but(r#"path_prefix = "/api/""#, r#"path_prefix = /api/"#);
    assert_refused(&config, &[(15, 15, "quoted")]).await;
    let config = valid_but("[[routes]]", "[[routes]");
    assert_refused(&config, &[(14, 10, "expected `]`")]).await;
}

#[tokio::test]
async fn check_on_a_missing_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"]).arg(&path);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:1:1: ", path.display())),
        "{stderr}"
    );
}

// === serve ===

/// A config in front of `up` on `listen` and `admin`, with `routes`.
/// A gatehouse serving `ROUTES` in front of a test upstream, with
/// `server_extra` added to its `[server]` table.
async fn serving(server_extra: &str) -> (TestUpstream, tempfile::TempDir, Gatehouse) {
    serving_with(&[], server_extra).await
}

/// [`serving`] with `env` added to the gateway's environment.
async fn serving_with(
    env: &[(&str, &str)],
    server_extra: &str,
) -> (TestUpstream, tempfile::TempDir, Gatehouse) {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gatehouse::start_with(dir.path(), env, |listen, admin| {
        serve_config(up.addr, listen, admin, server_extra, ROUTES)
    })
    .await;
    (up, dir, gw)
}

fn serve_config(
    up: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
    server: &str,
    routes: &str,
) -> String {
    config_with(up, routes)
        .replacen(
            "admin_listen = \"\"\n",
            &format!("listen = \"{listen}\"\nadmin_listen = \"{admin}\"\n{server}\n"),
            1,
        )
        .replace("timeout = \"2s\"", "timeout = \"60s\"")
}

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/public/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/slow/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/"
upstream = "up"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_invalid_config_exits_1_without_listening() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = free_addrs();
    let config = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nlisen = 1\n\n\
         [[upstreams]]\nname = \"api\"\ntargets = [\"builtin:echo\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = \"none\"\n"
    );
    let path = write_config(dir.path(), &config);
    let mut gw = Gatehouse::spawn(&path, listen, admin);
    let status = gw
        .exited_within(Duration::from_secs(30))
        .await
        .expect("serve exits on an invalid config");
    assert_eq!(status.code(), Some(1));
    let log = gw.log();
    assert!(
        log.contains(&format!("{}:4:1: unknown field `lisen`", path.display())),
        "{log}"
    );
    assert!(std::net::TcpStream::connect(listen).is_err());
    assert!(std::net::TcpStream::connect(admin).is_err());
    assert!(
        !dir.path().join("data").exists(),
        "an invalid config wrote state"
    );
}

/// A valid token for `alice` on `/api/x`: 200, and the upstream sees her.
async fn assert_alice_gets_through(gw: &Gatehouse) {
    let token = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    let r = get_with_token(&gw.url("/api/x"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_requests_and_health_checks() {
    let (_up, _dir, mut gw) = serving("").await;

    let r = get(&gw.url("/public/hello"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/public/hello");
    assert_alice_gets_through(&gw).await;
    assert_eq!(get(&gw.url("/api/x"), &[]).await.status, 401);
    assert_eq!(get(&gw.url("/nowhere"), &[]).await.status, 404);

    assert_eq!(get(&gw.admin_url("/healthz"), &[]).await.status, 200);
    assert_eq!(get(&gw.admin_url("/readyz"), &[]).await.status, 200);
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "still running:\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let (up, _dir, mut gw) = serving("shutdown_grace = \"10s\"").await;

    let url = gw.url("/slow/1500");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    assert!(
        eventually(Duration::from_secs(10), || async { up.hits() >= 1 }).await,
        "the slow request never reached the upstream"
    );
    let sent = Instant::now();
    gw.signal("TERM");

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request was cut off");
    let status = gw
        .exited_within(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", gw.log()));
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    // Drained, not cut: it waited for the request (1.5 s), not for the grace (10 s).
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(std::net::TcpStream::connect(gw.listen).is_err());
}

/// Idle connections (one after a request, one that has sent nothing yet)
/// are closed at SIGTERM, not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use std::io::{Read, Write};
    let (_up, _dir, mut gw) = serving("shutdown_grace = \"20s\"").await;
    let mut idle = std::net::TcpStream::connect(gw.listen).unwrap();
    idle.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let mut silent = std::net::TcpStream::connect(gw.listen).unwrap();

    let sent = Instant::now();
    gw.signal("TERM");
    let status = gw
        .exited_within(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", gw.log()));
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    // Under `header_read_timeout` (10 s by default) and `shutdown_grace`.
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "waited {:?} for an idle connection",
        sent.elapsed()
    );
    // Both were closed by the gateway.
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_after_shutdown_grace_when_a_request_outlasts_it() {
    let (up, _dir, mut gw) = serving("shutdown_grace = \"1s\"").await;

    let url = gw.url("/slow/60000");
    let _in_flight = tokio::spawn(async move { status_of(&url).await });
    assert!(
        eventually(Duration::from_secs(10), || async { up.hits() >= 1 }).await,
        "the slow request never reached the upstream"
    );
    let sent = Instant::now();
    gw.signal("TERM");
    let status = gw
        .exited_within(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", gw.log()));
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "exited after {:?}, before shutdown_grace:\n{}",
        sent.elapsed(),
        gw.log()
    );
}

/// Rewrites `gw`'s config in `dir` with a `/new/` route added (and `server`
/// in its `[server]` table), sends SIGHUP and waits until `/new/x` answers.
/// Returns the routes and the whole config written.
async fn reload_with_a_new_route(
    gw: &Gatehouse,
    up: SocketAddr,
    dir: &Path,
    server: &str,
) -> (String, String) {
    let with_new = format!(
        "{ROUTES}\n[[routes]]\npath_prefix = \"/new/\"\nupstream = \"up\"\nauth = \"none\"\n"
    );
    let config = serve_config(up, gw.listen, gw.admin, server, &with_new);
    std::fs::write(dir.join("gateway.toml"), &config).unwrap();
    gw.signal("HUP");
    let url = gw.url("/new/x");
    assert!(
        eventually(Duration::from_secs(20), || async {
            status_of(&url).await == Some(StatusCode::OK)
        })
        .await,
        "the new route never answered:\n{}",
        gw.log()
    );
    (with_new, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let (up, dir, mut gw) = serving("").await;
    assert_eq!(get(&gw.url("/new/x"), &[]).await.status, 404);

    // A new route.
    let (with_new, new_config) = reload_with_a_new_route(&gw, up.addr, dir.path(), "").await;
    let path = dir.path().join("gateway.toml");

    // A broken config (which would also drop `/new/`): refused, the old one serves.
    let broken = new_config.replacen("[server]\n", "[server]\nlisen = 1\n", 1);
    let broken_line = broken.lines().position(|l| l == "lisen = 1").unwrap() + 1;
    let broken = broken.replace(&with_new, ROUTES);
    std::fs::write(&path, &broken).unwrap();
    gw.signal("HUP");
    let diag = format!("{}:{broken_line}:1: unknown field `lisen`", path.display());
    assert!(
        eventually(Duration::from_secs(20), || async {
            gw.log().contains(&diag)
        })
        .await,
        "the broken config was not reported as `{diag}`:\n{}",
        gw.log()
    );
    assert!(gw.child.try_wait().unwrap().is_none(), "{}", gw.log());
    assert_eq!(get(&gw.url("/new/x"), &[]).await.status, 200);
    assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
    let token = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    assert_eq!(get_with_token(&gw.url("/api/x"), &token).await.status, 200);
    assert_eq!(get(&gw.admin_url("/readyz"), &[]).await.status, 200);
    // Both reloads are on `/metrics`.
    let metrics = get(&gw.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "gatehouse_config_reloads_total{result=\"applied\"} 1\n",
        "gatehouse_config_reloads_total{result=\"refused\"} 1\n",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
}

/// `TOKIO_WORKER_THREADS=1` runs tokio's current-thread scheduler (see
/// `main.rs`): its one thread applies a reload (built on the blocking
/// pool), serves a fast request while a slow one waits on the upstream, and
/// drains at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_reloads_and_drains() {
    let (up, dir, mut gw) =
        serving_with(&[("TOKIO_WORKER_THREADS", "1")], "shutdown_grace = \"10s\"").await;
    assert!(
        gw.log().contains("current-thread"),
        "not the current-thread scheduler:\n{}",
        gw.log()
    );

    reload_with_a_new_route(&gw, up.addr, dir.path(), "shutdown_grace = \"10s\"").await;

    // A request waiting on the upstream (5 s) holds up neither another
    // request nor, at SIGTERM, its own answer.
    let before = up.hits();
    let url = gw.url("/slow/5000");
    let slow = tokio::spawn(async move { get(&url, &[]).await });
    assert!(
        eventually(Duration::from_secs(10), || async { up.hits() > before }).await,
        "the slow request never reached the upstream"
    );
    assert_alice_gets_through(&gw).await;
    assert!(
        !slow.is_finished(),
        "the fast request waited for the slow one"
    );
    gw.signal("TERM");
    assert_eq!(slow.await.unwrap().status, 200, "cut off at SIGTERM");
    let status = gw
        .exited_within(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", gw.log()));
    assert_eq!(status.code(), Some(0), "{}", gw.log());
}

/// A `TOKIO_WORKER_THREADS` tokio would panic on is refused with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_worker_thread_count_exits_1_with_a_message() {
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"\xff2");
    for bad in ["0", "two", "", " 2"]
        .map(std::ffi::OsStr::new)
        .into_iter()
        .chain([not_utf8])
    {
        let dir = tempfile::tempdir().unwrap();
        let (listen, admin) = free_addrs();
        let config = serve_config("127.0.0.1:9".parse().unwrap(), listen, admin, "", ROUTES);
        let path = write_config(dir.path(), &config);
        let mut gw = Gatehouse::spawn_with(&path, listen, admin, &[("TOKIO_WORKER_THREADS", bad)]);
        let status = gw
            .exited_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("TOKIO_WORKER_THREADS={bad:?}: still running"));
        let log = gw.log();
        assert_eq!(status.code(), Some(1), "{bad:?}: {log}");
        assert!(
            log.contains("TOKIO_WORKER_THREADS must be a whole number"),
            "{bad:?}: {log}"
        );
        assert!(!log.contains("panicked"), "{bad:?}: {log}");
    }
}

/// More than one worker keeps tokio's multi-thread scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_worker_threads_run_the_multi_thread_scheduler() {
    let (_up, _dir, gw) = serving_with(&[("TOKIO_WORKER_THREADS", "3")], "").await;
    let log = gw.log();
    assert!(
        log.contains("workers=3") && log.contains("multi-thread"),
        "{log}"
    );
    assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
}
