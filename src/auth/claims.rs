//! A token's header and claims, read in place from their decoded JSON.
//!
//! On a cache miss the claims were parsed into a `serde_json::Map` (a
//! B-tree of owned strings and values) that was read for a dozen names and
//! dropped, and jsonwebtoken's `decode_header` parsed every JOSE member into
//! owned strings. Here each claim stays the JSON text it was (`RawValue`,
//! which serde still checks is valid JSON) until it is read, and the header
//! borrows what it reads. Per HS256 verification (callgrind, bench tokens):
//! 40.7k -> 35.8k instructions.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// The members of a JSON object, in order, each unparsed.
pub struct Claims<'a> {
    members: Vec<Member<'a>>,
}

struct Member<'a> {
    key: NameKey,
    name: Cow<'a, str>,
    value: &'a RawValue,
}

/// A member name's length and first eight bytes: one comparison of two
/// words settles whether a name of up to eight bytes (`sub`, `exp`,
/// `scope`...) is the one asked for. A token that misses the cache has a
/// dozen of its names looked up among its eight or so members; comparing
/// them as strings made some 25 `memcmp` calls per miss. With this key and
/// [`plain_string`], `str` and `u64` cost an HS256 miss 1.4k instructions
/// instead of 2.7k (callgrind, 4a38b55).
#[derive(Clone, Copy, PartialEq, Eq)]
struct NameKey(usize, u64);

impl NameKey {
    fn of(name: &str) -> Self {
        // A shift per byte, not a copy: a `memcpy` call of up to eight
        // bytes would cost more than the comparisons it saves.
        let prefix = name
            .bytes()
            .take(8)
            .enumerate()
            .fold(0, |k, (i, b)| k | u64::from(b) << (8 * i));
        NameKey(name.len(), prefix)
    }
}

impl<'a> Claims<'a> {
    /// `json` must be one JSON object.
    ///
    /// # Errors
    /// When it is not (or is not JSON).
    pub fn parse(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        // One UTF-8 check of the whole text, then serde_json's reader for
        // `str`, which trusts it: from bytes it checks every name and every
        // raw value again, 16 calls a miss (callgrind).
        let text = std::str::from_utf8(json)
            .map_err(|_| <serde_json::Error as serde::de::Error>::custom("not UTF-8"))?;
        serde_json::from_str(text)
    }

    /// The member `name` (RFC 7519 §4: of duplicate names, the last).
    fn raw(&self, name: &str) -> Option<&'a RawValue> {
        let key = NameKey::of(name);
        self.members
            .iter()
            .rev()
            .find(|m| m.key == key && (name.len() <= 8 || m.name == name))
            .map(|m| m.value)
    }

    /// Whether there is a member `name` (`null` included).
    pub fn contains(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    /// The member `name`, parsed (`null` is `Value::Null`).
    ///
    /// # Errors
    /// A value that is valid JSON syntax but no `Value` (a lone surrogate
    /// escape, a number out of range, nesting past serde_json's limit): a
    /// whole-map parse refused the token for those, and so must this.
    pub fn get(&self, name: &str) -> Result<Option<Value>, Unreadable> {
        self.raw(name)
            .map(|v| serde_json::from_str(v.get()).map_err(|_| Unreadable))
            .transpose()
    }

    /// The member `name` if it is a string (borrowed unless it has escapes);
    /// `None` if it is absent or `null`, `Err` if it is something else.
    pub fn str(&self, name: &str) -> Option<Result<Cow<'a, str>, ()>> {
        let raw = self.raw(name).filter(|v| v.get() != "null")?;
        if let Some(text) = plain_string(raw.get()) {
            return Some(Ok(Cow::Borrowed(text)));
        }
        Some(match <&'a str>::deserialize(raw) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            // Escapes (or not a string at all).
            Err(_) => String::deserialize(raw).map(Cow::Owned).map_err(|_| ()),
        })
    }

    /// The member `name` if it is a whole number ≥ 0; `Err` if it is there
    /// but something else (a string, a float, a negative number).
    pub fn u64(&self, name: &str) -> Option<Result<u64, ()>> {
        let raw = self.raw(name)?.get();
        // Digits only (JSON allows no sign or leading zero on them): what
        // serde would read, without setting up a deserializer. Anything
        // else, or too large, is serde's to accept or refuse.
        if raw.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = raw.parse()
        {
            return Some(Ok(n));
        }
        Some(serde_json::from_str(raw).map_err(|_| ()))
    }
}

/// The text of a JSON string value without escapes: what is between its
/// quotes, as it is. `raw` passed serde_json's parse, which refuses control
/// characters in strings, so without a `\` nothing is left to decode.
///
/// `str` and `u64` read eight claims of every token that misses the
/// cache; a deserializer for each was most of their 2.7k instructions of
/// an HS256 miss's 62k (see [`NameKey`] for what is left).
fn plain_string(raw: &str) -> Option<&str> {
    let text = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!text.contains('\\')).then_some(text)
}

impl<'de> Deserialize<'de> for Claims<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Claims<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some((Name(name), value)) =
                    map.next_entry::<Name<'de>, &'de RawValue>()?
                {
                    members.push(Member {
                        key: NameKey::of(&name),
                        name,
                        value,
                    });
                }
                Ok(Claims { members })
            }
        }
        d.deserialize_map(Members)
    }
}

/// A member name, borrowed from the JSON unless it has escapes. (serde reads
/// a plain `Cow<str>` into an owned `String`: borrowing takes `parse` from
/// 5.9k to 4.7k instructions for a bench token's eight members.)
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(Text)
    }
}

/// A claim whose JSON text is no value (see [`Claims::get`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable;

/// The JOSE header members this gateway reads (RFC 7515 §4.1), borrowed
/// from the decoded header. The ones it refuses to follow (`jku`, `x5u`,
/// `jwk`) or cannot understand (`crit`) are only noticed.
#[derive(Deserialize)]
pub struct JoseHeader<'a> {
    #[serde(borrow)]
    pub alg: Cow<'a, str>,
    #[serde(borrow, default)]
    pub typ: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub kid: Option<Cow<'a, str>>,
    #[serde(default)]
    pub jku: Option<IgnoredAny>,
    #[serde(default)]
    pub x5u: Option<IgnoredAny>,
    #[serde(default)]
    pub jwk: Option<IgnoredAny>,
    #[serde(default)]
    pub crit: Option<IgnoredAny>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_read_when_asked_for() {
        let json = br#"{"sub":"al\"ice","exp":1700000000,"n":-1,"f":1.5,"aud":["a","b"],"x":null,"sub":"bob"}"#;
        let c = Claims::parse(json).unwrap();
        // The last of duplicate names.
        assert_eq!(c.str("sub"), Some(Ok(Cow::Borrowed("bob"))));
        assert_eq!(c.u64("exp"), Some(Ok(1_700_000_000)));
        assert_eq!(c.u64("n"), Some(Err(())));
        assert_eq!(c.u64("f"), Some(Err(())));
        assert_eq!(c.u64("sub"), Some(Err(())));
        assert_eq!(c.str("exp"), Some(Err(())));
        assert_eq!(c.get("aud"), Ok(Some(serde_json::json!(["a", "b"]))));
        assert_eq!(c.get("x"), Ok(Some(Value::Null)));
        assert_eq!(c.str("x"), None);
        assert_eq!(c.get("missing"), Ok(None));
        let escaped = Claims::parse(br#"{"s":"a\u0062c"}"#).unwrap();
        assert_eq!(escaped.str("s"), Some(Ok(Cow::Owned("abc".into()))));
        // A name with escapes is the name it spells.
        let name = Claims::parse(br#"{"s\u0075b":"carol"}"#).unwrap();
        assert_eq!(name.str("sub"), Some(Ok(Cow::Borrowed("carol"))));
    }

    #[test]
    fn values_serde_cannot_hold_are_errors_not_nulls() {
        let deep = format!(r#"{{"roles":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        for json in [
            &br#"{"sub":"\ud800"}"#[..],
            br#"{"sub":1e999}"#,
            deep.as_bytes(),
        ] {
            let c = Claims::parse(json).unwrap();
            let name = if c.raw("sub").is_some() {
                "sub"
            } else {
                "roles"
            };
            assert_eq!(
                c.get(name),
                Err(Unreadable),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        assert_eq!(
            Claims::parse(br#"{"iss":"\ud800"}"#).unwrap().str("iss"),
            Some(Err(()))
        );
    }

    #[test]
    fn names_are_told_apart_past_their_first_eight_bytes() {
        let c = Claims::parse(
            br#"{"https://x/roles":"a","https://x/rolez":"b","https://x/":"c","12345678":"d","1234567":"e","":"f","123456789":"g"}"#,
        )
        .unwrap();
        let read = |name| c.str(name).map(Result::unwrap).map(Cow::into_owned);
        assert_eq!(read("https://x/roles").as_deref(), Some("a"));
        assert_eq!(read("https://x/rolez").as_deref(), Some("b"));
        assert_eq!(read("https://x/").as_deref(), Some("c"));
        assert_eq!(read("https://x/role"), None);
        assert_eq!(read("https://x/rolesx"), None);
        assert_eq!(read("12345678").as_deref(), Some("d"));
        assert_eq!(read("1234567").as_deref(), Some("e"));
        // Nine bytes, the first eight shared: compared whole.
        assert_eq!(read("123456789").as_deref(), Some("g"));
        assert_eq!(read("12345678x"), None);
        assert_eq!(read("").as_deref(), Some("f"));
        assert_eq!(read("\0"), None);
    }

    #[test]
    fn the_fast_readings_agree_with_serde() {
        // Every member's `str` and `u64`, against serde reading the same text.
        let json = concat!(
            r#"{"a":"plain","b":"es\"caped","c":"\u00e9t\u00e9","d":"été","e":"",
            "#,
            r#""f":"\ud800","g":0,"h":42,"i":18446744073709551615,"j":18446744073709551616,
            "#,
            r#""k":-1,"l":1.5,"m":1e3,"n":true,"o":null,"p":[1],"q":{"x":"y"},"r":"12",
            "#,
            r#""s" :  "spaced"  , "t":  7 }"#
        );
        let c = Claims::parse(json.as_bytes()).unwrap();
        assert_eq!(c.members.len(), 20);
        for member in &c.members {
            let (name, raw) = (&member.name, member.value);
            let slow_str = (raw.get() != "null").then(|| {
                <&str>::deserialize(raw)
                    .map(Cow::Borrowed)
                    .or_else(|_| String::deserialize(raw).map(Cow::Owned))
                    .map_err(|_| ())
            });
            assert_eq!(c.str(name), slow_str, "str of {name}: {}", raw.get());
            let slow_u64 = serde_json::from_str::<u64>(raw.get()).map_err(|_| ());
            assert_eq!(c.u64(name), Some(slow_u64), "u64 of {name}: {}", raw.get());
        }
        // Spot checks, so the comparison cannot pass with both sides wrong.
        assert_eq!(c.str("a"), Some(Ok(Cow::Borrowed("plain"))));
        assert_eq!(c.str("s"), Some(Ok(Cow::Borrowed("spaced"))));
        assert_eq!(c.str("b"), Some(Ok(Cow::Owned("es\"caped".into()))));
        assert_eq!(c.str("f"), Some(Err(())));
        assert_eq!(c.u64("i"), Some(Ok(u64::MAX)));
        assert_eq!(c.u64("j"), Some(Err(())));
        assert_eq!(c.u64("t"), Some(Ok(7)));
        assert_eq!(c.u64("r"), Some(Err(())));
    }

    #[test]
    fn only_a_json_object_is_claims() {
        for bad in [
            &b"[1]"[..],
            b"\"s\"",
            b"{",
            b"{\"a\":}",
            b"{} x",
            b"",
            b"{\"a\":\"\xff\"}",
            b"{\"\xc3\":1}",
        ] {
            assert!(
                Claims::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_header_notices_what_it_will_not_follow() {
        let h: JoseHeader = serde_json::from_slice(
            br#"{"alg":"HS256","typ":"JWT","kid":"k","jku":"https://x","crit":["b64"],"other":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(h.alg, "HS256");
        assert_eq!(h.kid.as_deref(), Some("k"));
        assert!(h.jku.is_some() && h.crit.is_some() && h.x5u.is_none() && h.jwk.is_none());
        let null: JoseHeader = serde_json::from_slice(br#"{"alg":"RS256","jku":null}"#).unwrap();
        assert!(null.jku.is_none());
        assert!(serde_json::from_slice::<JoseHeader>(br#"{"typ":"JWT"}"#).is_err());
        assert!(serde_json::from_slice::<JoseHeader>(br#"{"alg":"HS256","kid":5}"#).is_err());
    }
}
