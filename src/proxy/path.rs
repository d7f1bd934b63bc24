//! Paths an upstream could read differently from the route table.
//!
//! Routing compares the raw path, so anything an upstream framework would
//! normalize or decode before routing could make it see a different path
//! than the one whose rules were checked: `/public/../admin` routed as
//! `/public/` reaches `/admin` without `/admin`'s checks. Such paths are
//! refused with 400 rather than rewritten (Envoy's `normalize_path` +
//! `merge_slashes`, but strict):
//! - `.` and `..` segments and empty segments (`//`);
//! - `\` (some servers treat it as `/`) and `;` (Tomcat/Spring path
//!   parameters: `/admin;x/users` is `/admin/users` there);
//! - percent-encoded `/`, `\`, NUL and unreserved characters (RFC 3986
//!   §6.2.2.2 says normalizers decode the latter: `%61dmin` is `admin`,
//!   `%2e%2e` is `..`).
//!
//! Scans in place: a path allocates nothing.

/// True when `path` must be refused. One pass over the bytes.
pub fn is_ambiguous(path: &str) -> bool {
    let b = path.as_bytes();
    // Where the current segment began (just after its `/`).
    let mut segment = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'/' => {
                if i > 0 && is_dot_or_empty(&b[segment..i]) {
                    return true;
                }
                segment = i + 1;
            }
            b'\\' | b';' => return true,
            b'%' => match decode_hex(b.get(i + 1..i + 3)) {
                Some(d) if is_unreserved(d) || matches!(d, b'/' | b'\\' | 0) => return true,
                _ => {}
            },
            _ => {}
        }
    }
    // The last segment may be empty (`/a/`), not a dot-segment.
    matches!(&b[segment.min(b.len())..], b"." | b"..")
}

/// An empty segment (`//`) or a dot-segment, between two `/`.
fn is_dot_or_empty(segment: &[u8]) -> bool {
    matches!(segment, b"" | b"." | b"..")
}

fn decode_hex(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair?;
    let hi = (pair[0] as char).to_digit(16)?;
    let lo = (pair[1] as char).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// RFC 3986 §2.3.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_an_upstream_would_normalize_are_caught() {
        for p in [
            "/a/../b",
            "/a/..",
            "/a/.",
            "/.",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/..%2fb",
            "/api/admin%2Fusers",
            "/api/%61dmin/users",
            "/api/admin;x/users",
            "/a\\..\\b",
            "/a%5cb",
            "/a%00b",
            "//admin",
            "/a//b",
        ] {
            assert!(is_ambiguous(p), "{p}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/",
            "/a/b.json",
            "/a/..b",
            "/a/",
            "/.well-known/x",
            "/v1.2/x",
            "/a%20b",
            "/a/%2",
            "/a/%zz",
            "/caf%C3%A9",
        ] {
            assert!(!is_ambiguous(p), "{p}");
        }
    }
}
