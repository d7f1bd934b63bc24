//! The shared [`Store`]: Redis (`[state] backend = "redis"`; `redis://`,
//! `rediss://` over TLS with the system's roots or `[state] ca_file`, and a
//! `client_cert` when Redis asks for one, or `redis+unix://`), for several
//! gateway instances that must see one another's logins, rotations and
//! revocations.
//!
//! Every operation is one command or one Lua script (`EVAL`), so each is
//! atomic on the server: [`Store::rotate`]'s compare-and-set cannot be
//! interleaved with another instance's. Every record expires by itself
//! (`EXAT`), so [`Store::sweep`] has nothing to do. Keys, all under
//! `gatehouse:`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `fam:{id}` | hash | a [`Family`]: `subject`, `data` (roles and claims, JSON), `current`, `previous`, `rotated_at`, `exp`, `revoked` |
//! | `rev:jti:{jti}`, `rev:fam:{id}` | string | until when it is revoked |
//! | `rev:sub:{subject}` | string | `"{cutoff} {until}"` (logout-all) |
//! | `revocations` | stream | every revocation, in order: what the other instances read ([`Store::revocations_since`]) |
//!
//! A call returns once Redis has applied the change. Whether that survives
//! a Redis crash is the server's persistence setting (`appendonly yes` with
//! `appendfsync always` for the embedded backend's guarantee).

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, Value};

use super::{Family, Revocation, RotateRequest, Rotation, Store, StoreError, StoreFuture};
use crate::config::RedisTls;

/// Every key starts with this.
const PREFIX: &str = "gatehouse:";

/// The latest time Redis takes for an expiry (9999-12-31): a token from
/// another issuer may claim any `exp`, and Redis refuses one past this.
const LATEST: u64 = 253_402_300_799;

/// The revocation stream is trimmed to about this many entries. An
/// instance reads it four times a second, so only one that stalled while
/// this many revocations were made could miss some (a restart reloads
/// every revocation in force).
const STREAM_LEN: u64 = 100_000;

/// How long a command (or a connection) may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Keys a `SCAN` call looks at.
const SCAN_COUNT: u64 = 10_000;

/// Revocations read from the stream per call.
const STREAM_BATCH: usize = 1000;

/// Creates a family unless its id exists (its key outlives `exp` by a
/// second: see [`ROTATE`]). KEYS: fam. ARGV: subject, data,
/// current, rotated_at, exp.
const INSERT_FAMILY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'subject', ARGV[1], 'data', ARGV[2], 'current', ARGV[3],
  'rotated_at', ARGV[4], 'exp', ARGV[5], 'revoked', '0')
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[5]) + 1)
return 1
";

/// The rotation rules of `embedded::decide`, atomically. A family lives
/// through its `exp` second (`exp >= now`, as in the embedded store), so
/// its key expires a second after it. KEYS: fam,
/// rev:fam, stream. ARGV: presented, next, now, exp, grace, family id,
/// stream length.
const ROTATE: &str = r"
local f = redis.call('HMGET', KEYS[1], 'current', 'previous', 'rotated_at', 'exp', 'revoked', 'subject')
local now = tonumber(ARGV[3])
if not f[1] or tonumber(f[4]) < now then return {'unknown'} end
if f[5] == '1' then return {'revoked'} end
if ARGV[1] == f[1] then
  redis.call('HSET', KEYS[1], 'previous', f[1], 'current', ARGV[2], 'rotated_at', ARGV[3], 'exp', ARGV[4])
  redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[4]) + 1)
  return {'rotated', redis.call('HGETALL', KEYS[1])}
end
local grace = tonumber(ARGV[5])
if grace > 0 and f[2] and ARGV[1] == f[2] and now <= tonumber(f[3]) + grace then
  return {'grace'}
end
redis.call('HSET', KEYS[1], 'revoked', '1')
local exp = tonumber(f[4])
local till = math.max(exp, tonumber(redis.call('GET', KEYS[2]) or '0'))
redis.call('SET', KEYS[2], till, 'EXAT', till)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'kind', 'fam', 'id', ARGV[6], 'until', till)
return {'reused', f[6]}
";

/// Revokes a `jti` or a family until the later of ARGV[1] and what is
/// recorded, marks the family record (KEYS[3], when given) revoked, and
/// logs it. KEYS: rev key, stream[, fam]. ARGV: until, kind, id, stream length.
const REVOKE: &str = r"
local till = math.max(tonumber(ARGV[1]), tonumber(redis.call('GET', KEYS[1]) or '0'))
redis.call('SET', KEYS[1], till, 'EXAT', till)
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'revoked', '1')
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'kind', ARGV[2], 'id', ARGV[3], 'until', till)
return till
";

/// Logout-all: keeps the later cutoff and the later until. KEYS: rev:sub,
/// stream. ARGV: cutoff, until, subject, stream length.
const REVOKE_SUBJECT: &str = r"
local cutoff, till = tonumber(ARGV[1]), tonumber(ARGV[2])
local old = redis.call('GET', KEYS[1])
if old then
  local c, u = string.match(old, '^(%d+) (%d+)$')
  if c then
    cutoff = math.max(cutoff, tonumber(c))
    till = math.max(till, tonumber(u))
  end
end
redis.call('SET', KEYS[1], string.format('%d %d', cutoff, till), 'EXAT', till)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'sub', 'id', ARGV[3],
  'cutoff', cutoff, 'until', till)
return till
";

/// The scripts, each hashed once (the client sends `EVALSHA`, and the
/// script itself only when Redis does not know it yet).
static INSERT_FAMILY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(INSERT_FAMILY));
static ROTATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ROTATE));
static REVOKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REVOKE));
static REVOKE_SUBJECT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REVOKE_SUBJECT));

/// A Redis-backed store. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); fails when Redis does
    /// not answer. Afterwards the connection is re-established by itself
    /// when it drops; an operation while it is down fails (a 503).
    ///
    /// # Errors
    /// A URL the client cannot use, or no answer from Redis.
    pub async fn connect(url: &str, tls: &RedisTls) -> Result<RedisStore, StoreError> {
        let client = if *tls == RedisTls::default() {
            redis::Client::open(url)
        } else {
            let certs = redis::TlsCertificates {
                client_tls: tls
                    .client
                    .as_ref()
                    .map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                root_cert: tls.ca_pem.clone(),
            };
            redis::Client::build_with_tls(url, certs)
        }
        .map_err(fail("redis url"))?;
        // A request that needs the store waits at most this for Redis (then 503).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            2 * TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            StoreError(format!(
                "redis: no answer within {}s",
                2 * TIMEOUT.as_secs()
            ))
        })?
        .map_err(fail("connect to redis"))?;
        Ok(RedisStore { conn })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Revokes a `jti` or a family (`kind`), marking the family's record.
    async fn revoke(&self, kind: &'static str, id: &str, until: u64) -> Result<(), StoreError> {
        let mut call = REVOKE_SCRIPT.key(key(&format!("rev:{kind}"), id));
        call.key(stream());
        if kind == "fam" {
            call.key(key("fam", id));
        }
        let _: u64 = call
            .arg(until.min(LATEST))
            .arg(kind)
            .arg(id)
            .arg(STREAM_LEN)
            .invoke_async(&mut self.conn())
            .await
            .map_err(fail("revoke"))?;
        Ok(())
    }
}

fn key(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}:{id}")
}

fn stream() -> String {
    format!("{PREFIX}revocations")
}

fn fail<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError(format!("{context}: {e}"))
}

/// The roles and claims of a family, stored as one JSON field.
#[derive(serde::Serialize, serde::Deserialize)]
struct Data {
    roles: Vec<String>,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl Store for RedisStore {
    fn insert_family(&self, family: &Family) -> StoreFuture<'_, ()> {
        let data = Data {
            roles: family.roles.clone(),
            claims: family.claims.clone(),
        };
        let family = family.clone();
        Box::pin(async move {
            let data = serde_json::to_string(&data).map_err(fail("encode family"))?;
            let created: i64 = INSERT_FAMILY_SCRIPT
                .key(key("fam", &family.id))
                .arg(&family.subject)
                .arg(data)
                .arg(&family.current)
                .arg(family.rotated_at)
                .arg(family.exp.min(LATEST))
                .invoke_async(&mut self.conn())
                .await
                .map_err(fail("insert family"))?;
            if created == 1 {
                Ok(())
            } else {
                Err(StoreError(format!("family {} already exists", family.id)))
            }
        })
    }

    fn rotate<'a>(&'a self, req: RotateRequest<'a>) -> StoreFuture<'a, Rotation> {
        Box::pin(async move {
            let answer: Vec<Value> = ROTATE_SCRIPT
                .key(key("fam", req.family))
                .key(key("rev:fam", req.family))
                .key(stream())
                .arg(req.presented)
                .arg(req.next)
                .arg(req.now)
                .arg(req.exp.min(LATEST))
                .arg(req.grace)
                .arg(req.family)
                .arg(STREAM_LEN)
                .invoke_async(&mut self.conn())
                .await
                .map_err(fail("rotate"))?;
            let text = |v: Option<&Value>| match v {
                Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
                Some(Value::SimpleString(s)) => Some(s.clone()),
                _ => None,
            };
            match text(answer.first()).as_deref() {
                Some("unknown") => Ok(Rotation::Unknown),
                Some("revoked") => Ok(Rotation::Revoked),
                Some("grace") => Ok(Rotation::Grace),
                Some("reused") => Ok(Rotation::Reused {
                    subject: text(answer.get(1)).unwrap_or_default(),
                }),
                Some("rotated") => {
                    let fields = match answer.get(1) {
                        Some(Value::Array(items)) => items
                            .chunks(2)
                            .filter_map(|kv| Some((text(kv.first())?, text(kv.get(1))?)))
                            .collect(),
                        _ => Vec::new(),
                    };
                    family_from(req.family, &fields).map(Rotation::Rotated)
                }
                _ => Err(StoreError("rotate: unexpected answer from redis".into())),
            }
        })
    }

    fn revoke_family<'a>(&'a self, family: &'a str, until: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.revoke("fam", family, until))
    }

    fn revoke_jti<'a>(&'a self, jti: &'a str, until: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.revoke("jti", jti, until))
    }

    fn revoke_subject<'a>(
        &'a self,
        subject: &'a str,
        cutoff: u64,
        until: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _: u64 = REVOKE_SUBJECT_SCRIPT
                .key(key("rev:sub", subject))
                .key(stream())
                .arg(cutoff)
                .arg(until.min(LATEST))
                .arg(subject)
                .arg(STREAM_LEN)
                .invoke_async(&mut self.conn())
                .await
                .map_err(fail("revoke subject"))?;
            Ok(())
        })
    }

    fn live_revocations(&self, now: u64) -> StoreFuture<'_, Vec<Revocation>> {
        Box::pin(async move {
            let mut conn = self.conn();
            let pattern = format!("{PREFIX}rev:*");
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0u64;
            loop {
                // COUNT: without it Redis looks at 10 keys a call, and every
                // family is a key too.
                let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn)
                    .await
                    .map_err(fail("scan revocations"))?;
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let mut out = Vec::new();
            for chunk in keys.chunks(STREAM_BATCH) {
                let values: Vec<Option<String>> =
                    conn.mget(chunk).await.map_err(fail("read revocations"))?;
                for (k, v) in chunk.iter().zip(values) {
                    let Some(v) = v else { continue };
                    if let Some(r) = revocation_of_key(k, &v).filter(|r| until(r) > now) {
                        out.push(r);
                    }
                }
            }
            Ok(out)
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn sweep(&self, _now: u64) -> StoreFuture<'_, usize> {
        // Every record carries its own EXAT.
        Box::pin(async { Ok(0) })
    }

    fn log_position(&self) -> StoreFuture<'_, String> {
        Box::pin(async move {
            let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                .arg(stream())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.conn())
                .await
                .map_err(fail("read revocation log"))?;
            Ok(last
                .into_iter()
                .next()
                .map_or_else(|| "0-0".into(), |(id, _)| id))
        })
    }

    fn revocations_since<'a>(
        &'a self,
        position: &'a str,
    ) -> StoreFuture<'a, (Vec<Revocation>, String)> {
        Box::pin(async move {
            type Entries = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;
            let read: Option<Entries> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(STREAM_BATCH)
                .arg("STREAMS")
                .arg(stream())
                .arg(position)
                .query_async(&mut self.conn())
                .await
                .map_err(fail("read revocation log"))?;
            let mut next = position.to_string();
            let mut out = Vec::new();
            for (_, entries) in read.unwrap_or_default() {
                for (id, fields) in entries {
                    if let Some(r) = revocation_of_entry(&fields) {
                        out.push(r);
                    }
                    next = id;
                }
            }
            Ok((out, next))
        })
    }
}

/// A family from its hash fields (`id` is the key's).
/// The value of `name` among a hash's or a stream entry's fields.
fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f String> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn family_from(id: &str, fields: &[(String, String)]) -> Result<Family, StoreError> {
    let get = |name: &str| field(fields, name);
    let bad = || StoreError(format!("family {id}: malformed record in redis"));
    let number = |name: &str| {
        get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(bad)
    };
    let data: Data = get("data")
        .and_then(|d| serde_json::from_str(d).ok())
        .ok_or_else(bad)?;
    Ok(Family {
        id: id.to_string(),
        subject: get("subject").cloned().ok_or_else(bad)?,
        roles: data.roles,
        claims: data.claims,
        current: get("current").cloned().ok_or_else(bad)?,
        previous: get("previous").cloned(),
        rotated_at: number("rotated_at")?,
        exp: number("exp")?,
        revoked: get("revoked").is_some_and(|v| v == "1"),
    })
}

fn until(r: &Revocation) -> u64 {
    match r {
        Revocation::Jti { until, .. }
        | Revocation::Family { until, .. }
        | Revocation::Subject { until, .. } => *until,
    }
}

/// The revocation a `rev:*` key and its value record.
fn revocation_of_key(key: &str, value: &str) -> Option<Revocation> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix("rev:")?;
    let (kind, id) = rest.split_once(':')?;
    revocation(kind, id, value)
}

/// The revocation a stream entry records.
fn revocation_of_entry(fields: &[(String, String)]) -> Option<Revocation> {
    let get = |name: &str| field(fields, name).map(String::as_str);
    let kind = get("kind")?;
    let value = match kind {
        "sub" => format!("{} {}", get("cutoff")?, get("until")?),
        _ => get("until")?.to_string(),
    };
    revocation(kind, get("id")?, &value)
}

fn revocation(kind: &str, id: &str, value: &str) -> Option<Revocation> {
    let id = id.to_string();
    match kind {
        "jti" => Some(Revocation::Jti {
            jti: id,
            until: value.parse().ok()?,
        }),
        "fam" => Some(Revocation::Family {
            id,
            until: value.parse().ok()?,
        }),
        "sub" => {
            let (cutoff, until) = value.split_once(' ')?;
            Some(Revocation::Subject {
                subject: id,
                cutoff: cutoff.parse().ok()?,
                until: until.parse().ok()?,
            })
        }
        _ => None,
    }
}
