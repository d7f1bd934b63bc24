//! `Authorization: Bearer <token>` extraction (RFC 6750 §2.1): from the
//! header only, never from the query string or a form body.

use std::fmt;

use http::{HeaderMap, header::AUTHORIZATION};

/// A bearer token borrowed from the request headers. `Debug` never prints it.
#[derive(Clone, Copy)]
pub struct BearerToken<'a>(&'a [u8]);

impl<'a> BearerToken<'a> {
    /// The token as sent: what the verified-claims cache is keyed by.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The token, once it has RFC 6750 §2.1 syntax. Left out of [`extract`]
    /// so that a cache hit (a token verified before, so well formed) does not
    /// pay for a scan of every byte (nor for a UTF-8 check, about 250
    /// instructions on a 260-byte token): callers check it before verifying.
    ///
    /// # Errors
    /// [`Malformed::BadToken`] for characters a b64token cannot hold.
    pub fn check_syntax(&self) -> Result<&'a str, Malformed> {
        if is_b64token(self.0) {
            // b64token characters are ASCII: this cannot fail.
            std::str::from_utf8(self.0).map_err(|_| Malformed::BadToken)
        } else {
            Err(Malformed::BadToken)
        }
    }
}

impl fmt::Debug for BearerToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<token>")
    }
}

/// Why an `Authorization` header could not be read as a bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// More than one `Authorization` header.
    Repeated,
    /// `Bearer` with nothing, or with characters outside RFC 6750's b64token.
    BadToken,
}

/// The bearer token of `headers`, if the client sent one.
///
/// `Ok(None)`: no `Authorization` header, or one with another scheme (e.g.
/// `Basic`): a protected route answers 401 to both.
///
/// # Errors
/// [`Malformed`] when the header is there but is not a usable bearer token
/// (400 `invalid_request`).
pub fn extract(headers: &HeaderMap) -> Result<Option<BearerToken<'_>>, Malformed> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Malformed::Repeated);
    }
    let bytes = value.as_bytes();
    const SCHEME: &[u8] = b"bearer";
    if bytes.len() < SCHEME.len() || !bytes[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Ok(None);
    }
    let rest = &bytes[SCHEME.len()..];
    if !rest.is_empty() && rest[0] != b' ' {
        // `BearerX...` is another scheme, not a malformed bearer header.
        return Ok(None);
    }
    let token = trim_spaces(rest);
    if token.is_empty() {
        return Err(Malformed::BadToken);
    }
    // See `BearerToken::check_syntax` for the rest of the syntax check.
    Ok(Some(BearerToken(token)))
}

fn trim_spaces(mut b: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' '] = b {
        b = rest;
    }
    b
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let body_end = t.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    // One table lookup a byte: this runs over every token on every request.
    body_end > 0 && t[..body_end].iter().all(|&c| B64TOKEN[usize::from(c)])
}

/// RFC 6750 §2.1 b64token characters (before the trailing `=`s).
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        c += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// `extract`, then the syntax check its callers make before verifying.
    fn checked(h: &HeaderMap) -> Result<Option<BearerToken<'_>>, Malformed> {
        match extract(h)? {
            Some(t) => t.check_syntax().map(|_| Some(t)),
            None => Ok(None),
        }
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_a_bearer_token_any_scheme_casing() {
        for v in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "BEARER  abc.def.ghi ",
        ] {
            let h = headers(&[v]);
            assert_eq!(extract(&h).unwrap().unwrap().as_bytes(), b"abc.def.ghi");
        }
    }

    #[test]
    fn other_schemes_and_no_header_are_no_token() {
        assert!(extract(&headers(&[])).unwrap().is_none());
        assert!(
            extract(&headers(&["Basic dXNlcjpwYXNz"]))
                .unwrap()
                .is_none()
        );
        assert!(extract(&headers(&["BearerX abc"])).unwrap().is_none());
    }

    #[test]
    fn malformed_bearer_headers_are_errors() {
        assert_eq!(
            checked(&headers(&["Bearer"])).unwrap_err(),
            Malformed::BadToken
        );
        assert_eq!(
            checked(&headers(&["Bearer   "])).unwrap_err(),
            Malformed::BadToken
        );
        assert_eq!(
            checked(&headers(&["Bearer a b"])).unwrap_err(),
            Malformed::BadToken
        );
        assert_eq!(
            checked(&headers(&["Bearer a,b"])).unwrap_err(),
            Malformed::BadToken
        );
        assert_eq!(
            checked(&headers(&["Bearer ==="])).unwrap_err(),
            Malformed::BadToken
        );
        assert_eq!(
            checked(&headers(&["Bearer a", "Bearer b"])).unwrap_err(),
            Malformed::Repeated
        );
    }

    #[test]
    fn debug_never_prints_the_token() {
        let h = headers(&["Bearer secret.token.value"]);
        let t = extract(&h).unwrap().unwrap();
        assert_eq!(format!("{t:?}"), "<token>");
    }
}
