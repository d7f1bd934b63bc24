//! `gatehouse keygen` and `gatehouse hash-password` through the real binary.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

fn gatehouse(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

const ROUTES: &str = r#"
[server]
admin_listen = ""

[[upstreams]]
name = "echo"
targets = ["builtin:echo"]

[[routes]]
path_prefix = "/"
upstream = "echo"
"#;

#[test]
fn keygen_writes_0600_keys_that_check_accepts_and_token_signs_with() {
    for alg in ["EdDSA", "ES256", "RS256", "HS256"] {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let out = gatehouse(
            &["keygen", "--alg", alg, "--out", keys.to_str().unwrap()],
            b"",
        );
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for entry in std::fs::read_dir(&keys).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{alg}");
        }
        // The printed [[keys]] entry is a working config.
        let entry = String::from_utf8(out.stdout).unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, format!("{entry}{ROUTES}")).unwrap();
        let c = config.to_str().unwrap();
        let check = gatehouse(&["check", "-c", c], b"");
        assert!(
            check.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let token = gatehouse(&["token", "--sub", "alice", "-c", c], b"");
        assert!(token.status.success(), "{alg}");
        let token = String::from_utf8(token.stdout).unwrap();
        assert_eq!(token.trim().split('.').count(), 3, "{alg}: {token}");
        // Same directory again: nothing is overwritten.
        let again = gatehouse(
            &["keygen", "--alg", alg, "--out", keys.to_str().unwrap()],
            b"",
        );
        assert_eq!(again.status.code(), Some(1), "{alg}");
    }
}

#[test]
fn hash_password_prints_an_argon2id_phc_string() {
    let out = gatehouse(&["hash-password"], b"s3cret-pass\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = String::from_utf8(out.stdout).unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(!phc.contains("s3cret-pass"));
    let empty = gatehouse(&["hash-password"], b"\n");
    assert_eq!(empty.status.code(), Some(1));
}
