//! The steps of the proxy hot path, each alone: route match, bearer
//! extraction, cache hit, revocation check, header rewrite, and one
//! uncached verification per algorithm. `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::auth::{ClaimsCache, bearer};
use gatehouse::proxy::headers::{Downstream, Seen, rewrite_request};
use gatehouse::state::Snapshot;
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::Algorithm;

// The integration tests' harness: keys for every algorithm, config files, signing.
#[path = "../tests/support/mod.rs"]
mod support;

struct Fixture {
    snap: Snapshot,
    tokens: Vec<(Algorithm, String)>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
[server]
admin_listen = ""
[[issuers]]
keys = ["hs", "rs", "es", "ed"]
[[upstreams]]
name = "up"
targets = ["http://127.0.0.1:9"]
[[routes]]
path_prefix = "/"
upstream = "up"
auth = "none"
[[routes]]
path_prefix = "/api/"
upstream = "up"
[[routes]]
path_prefix = "/api/admin/"
upstream = "up"
roles_any = ["admin"]
[[routes]]
path_prefix = "/static/"
upstream = "up"
auth = "none"
"#;
    let path = support::write_config(dir.path(), &format!("{}{routes}", support::ALL_KEYS));
    let snap = Snapshot::load(&path).unwrap();
    let mut claims = support::claims("42");
    claims["roles"] = serde_json::json!(["user"]);
    claims["email"] = serde_json::json!("alice@example.com");
    let tokens = [
        (Algorithm::HS256, "hs"),
        (Algorithm::RS256, "rs"),
        (Algorithm::ES256, "es"),
        (Algorithm::EdDSA, "ed"),
    ]
    .into_iter()
    .map(|(alg, kid)| (alg, support::sign(alg, Some(kid), &claims)))
    .collect();
    Fixture {
        snap,
        tokens,
        _dir: dir,
    }
}

fn request_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("wrk"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let snap = &f.snap;
    let hs = &f.tokens[0].1;

    c.bench_function("route_match", |b| {
        b.iter(|| {
            snap.routes.find(
                &Method::GET,
                Some("api.example.com"),
                black_box("/api/users/42"),
            )
        })
    });

    let headers = request_headers(hs);
    c.bench_function("bearer_extract", |b| {
        b.iter(|| bearer::extract(black_box(&headers)))
    });

    let claims = snap.cache.insert(hs, snap.verifier.verify(hs).unwrap());
    c.bench_function("cache_hit", |b| b.iter(|| snap.cache.get(black_box(hs))));
    // The same token again on one client connection: compared with the one
    // the connection remembers, no digest and no moka.
    let last = gatehouse::auth::LastToken::default();
    snap.cache
        .set_last(&last, hs.as_bytes(), &claims, snap.cache.epoch());
    c.bench_function("last_token_hit", |b| {
        b.iter(|| snap.cache.get_last(&last, black_box(hs.as_bytes())))
    });

    // After every hit: the revocation check, with nothing revoked (one
    // atomic load) and with 20,000 revocations in force.
    let revocations = gatehouse::store::Revocations::default();
    c.bench_function("revocation_check/none_revoked", |b| {
        b.iter(|| revocations.check(black_box(claims.revocation_ref())))
    });
    let until = gatehouse::auth::issue::now() + 3600;
    for i in 0..10_000 {
        revocations.add(gatehouse::store::Revocation::Jti {
            jti: format!("jti-{i}"),
            until,
        });
        revocations.add(gatehouse::store::Revocation::Family {
            id: format!("fam-{i}"),
            until,
        });
    }
    c.bench_function("revocation_check/20k_revoked", |b| {
        b.iter(|| revocations.check(black_box(claims.revocation_ref())))
    });

    // A full cache of 1,000 taking a new token on every request (the miss
    // path of `TOKEN_POOL=20000` with a small cache): insert plus eviction.
    let small = ClaimsCache::new(1000, Duration::from_secs(300));
    let keys: Vec<String> = (0..20_000).map(|i| format!("{hs}{i}")).collect();
    let mut next = keys.iter().cycle();
    c.bench_function("cache_insert_evicting", |b| {
        b.iter(|| {
            let key = small.key(next.next().unwrap().as_bytes());
            small.insert_key(key, Arc::clone(&claims), small.epoch())
        })
    });

    let via = HeaderValue::from_static("1.1 gatehouse");
    let peer_value = HeaderValue::from_static("127.0.0.1");
    let down = Downstream {
        peer_value: &peer_value,
        peer: IpAddr::from([127, 0, 0, 1]),
        trusted: false,
        via: &via,
        host: Some(HeaderValue::from_static("api.example.com")),
        https: false,
        client_cert: None,
    };
    let ids = snap.verifier.identity();
    c.bench_function("header_rewrite", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| {
                let seen = Seen::scan(h, Some(ids));
                rewrite_request(h, seen, false, &down, ids, Some(&claims));
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let mut g = c.benchmark_group("verify_uncached");
    for (alg, token) in &f.tokens {
        g.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| snap.verifier.verify(black_box(token)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
