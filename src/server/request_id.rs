//! `[server] request_id`: one id per request, in a header the upstream, the
//! client and the access log all see, as Envoy's `x-request-id` (and
//! nginx's `$request_id`, Kong's `correlation-id`).
//!
//! A request that comes from a trusted proxy (`trusted_proxies`) keeps the
//! id that proxy gave it, when it is a plausible one (1 to 128 visible
//! ASCII characters); any other request gets a new one, so a client cannot
//! pass off its own as the gateway's.
//!
//! A new id is a version-4 UUID made without a system call: SipHash-1-3
//! (the standard library's `RandomState`, keyed at random per process) of a
//! counter. uuid's own `new_v4` asks the kernel for randomness on every
//! call.

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest id kept from a trusted proxy.
const MAX_LEN: usize = 128;

static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The request's id: the one in `name` when `trusted` and plausible, else
/// a new one, written into `headers` (replacing any other).
pub fn assign(headers: &mut HeaderMap, name: &HeaderName, trusted: bool) -> HeaderValue {
    if trusted
        && let Some(kept) = headers.get(name).filter(|v| plausible(v))
        && headers.get_all(name).iter().count() == 1
    {
        return kept.clone();
    }
    let id = new_id();
    headers.insert(name.clone(), id.clone());
    id
}

fn plausible(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=MAX_LEN).contains(&b.len()) && b.iter().all(|c| c.is_ascii_graphic())
}

/// A new version-4 UUID, lower-case and hyphenated.
pub fn new_id() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = KEY.hash_one((n, 0u8));
    let lo = KEY.hash_one((n, 1u8));
    let bytes = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> HeaderName {
        HeaderName::from_static("x-request-id")
    }

    #[test]
    fn new_ids_are_distinct_v4_uuids() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn a_trusted_proxys_id_is_kept_a_clients_replaced() {
        let mut h = HeaderMap::new();
        h.insert(name(), HeaderValue::from_static("from-the-lb-42"));
        assert_eq!(assign(&mut h, &name(), true), "from-the-lb-42");
        assert_eq!(h[name()], "from-the-lb-42");
        let id = assign(&mut h, &name(), false);
        assert_ne!(id, "from-the-lb-42");
        assert_eq!(h[name()], id);
    }

    #[test]
    fn implausible_or_repeated_ids_are_replaced_even_from_a_trusted_proxy() {
        for bad in ["", "has space", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(name(), HeaderValue::from_str(bad).unwrap());
            assert_ne!(assign(&mut h, &name(), true), bad, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.append(name(), HeaderValue::from_static("a"));
        h.append(name(), HeaderValue::from_static("b"));
        let id = assign(&mut h, &name(), true);
        assert_eq!(h.get_all(name()).iter().collect::<Vec<_>>(), [&id]);
    }
}
