//! The bodies `/auth/*` accepts: JSON objects or HTML-form encoding (what
//! FastAPI's `OAuth2PasswordRequestForm` and Swagger UI send), at most
//! [`MAX_BODY`] bytes, read whole (they are small) and parsed into
//! [`Fields`].

use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// Larger `/auth/*` bodies get a 413.
pub const MAX_BODY: usize = 16 * 1024;

/// The fields of a request body, by name.
#[derive(Debug, Default)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// A string field, or 400 when it is missing or not a string.
    pub fn required(&self, name: &'static str) -> Result<&str, GatewayError> {
        self.optional(name)?
            .ok_or(GatewayError::BadRequest(missing(name)))
    }

    /// A string field that may be absent (400 when it is not a string).
    pub fn optional(&self, name: &'static str) -> Result<Option<&str>, GatewayError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(GatewayError::BadRequest(not_string(name))),
        }
    }
}

fn missing(name: &str) -> &'static str {
    match name {
        "username" => "`username` is required",
        "password" => "`password` is required",
        "refresh_token" => "`refresh_token` is required",
        _ => "a required field is missing",
    }
}

fn not_string(name: &str) -> &'static str {
    match name {
        "username" => "`username` must be a string",
        "password" => "`password` must be a string",
        "refresh_token" => "`refresh_token` must be a string",
        "grant_type" => "`grant_type` must be a string",
        _ => "a field must be a string",
    }
}

enum Kind {
    Json,
    Form,
}

/// Reads and parses the body of `req`. An empty body is empty [`Fields`]
/// when `may_be_empty` (logout with only a bearer token).
///
/// # Errors
/// 413 over [`MAX_BODY`], 415 for a content type other than JSON or form,
/// 400 for a body that does not parse.
pub async fn read(req: Request<Incoming>, may_be_empty: bool) -> Result<Fields, GatewayError> {
    let declared = content_length(req.headers())?;
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let empty = declared == Some(0) || req.body().is_end_stream();
    if empty && may_be_empty {
        return Ok(Fields::default());
    }
    let kind = kind(req.headers())?;
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(GatewayError::PayloadTooLarge);
        }
        Err(_) => {
            return Err(GatewayError::BadRequest(
                "the request body could not be read",
            ));
        }
    };
    if bytes.is_empty() && may_be_empty {
        return Ok(Fields::default());
    }
    match kind {
        Kind::Json => json(&bytes),
        Kind::Form => form(&bytes),
    }
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>, GatewayError> {
    h.get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(GatewayError::BadRequest("invalid Content-Length"))
        })
        .transpose()
}

fn kind(h: &HeaderMap) -> Result<Kind, GatewayError> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(GatewayError::UnsupportedMediaType)?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(Kind::Json)
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Kind::Form)
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

fn json(bytes: &[u8]) -> Result<Fields, GatewayError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(Fields(map)),
        Ok(_) => Err(GatewayError::BadRequest("the body must be a JSON object")),
        Err(_) => Err(GatewayError::BadRequest("the body is not valid JSON")),
    }
}

/// RFC 6749 §3.2: a parameter sent twice is an error, not a choice.
fn form(bytes: &[u8]) -> Result<Fields, GatewayError> {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(bytes) {
        if map
            .insert(k.into_owned(), Value::String(v.into_owned()))
            .is_some()
        {
            return Err(GatewayError::BadRequest("a form field appears twice"));
        }
    }
    Ok(Fields(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_decode_and_duplicates_are_refused() {
        let f = form(b"grant_type=password&username=al%20ice&password=p%26w+x").unwrap();
        assert_eq!(f.required("username").unwrap(), "al ice");
        assert_eq!(f.required("password").unwrap(), "p&w x");
        assert!(form(b"username=a&username=b").is_err());
    }

    #[test]
    fn json_fields_must_be_strings_in_an_object() {
        let f = json(br#"{"username": "a", "password": 5}"#).unwrap();
        assert_eq!(f.required("username").unwrap(), "a");
        assert!(f.required("password").is_err());
        assert!(f.required("refresh_token").is_err());
        assert!(json(b"[1]").is_err());
        assert!(json(b"{").is_err());
    }

    #[test]
    fn content_types_with_parameters_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(matches!(kind(&h), Ok(Kind::Json)));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(kind(&h).err(), Some(GatewayError::UnsupportedMediaType));
    }
}
