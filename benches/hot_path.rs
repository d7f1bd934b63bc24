//! The steps of the proxy hot path, each alone: route match, bearer
//! extraction, cache hit, header rewrite, and one uncached verification per
//! algorithm. `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::auth::{ClaimsCache, bearer};
use gatehouse::proxy::headers::{Downstream, set_forwarding, set_identity, strip_hop_by_hop};
use gatehouse::state::Snapshot;
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Fixture {
    snap: Snapshot,
    tokens: Vec<(Algorithm, String)>,
    _dir: tempfile::TempDir,
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let files = [
        ("hs.secret", SECRET.to_string()),
        ("rs.pem", pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref())),
        ("es.pem", pem("PRIVATE KEY", ec.as_ref())),
        ("ed.pem", pem("PRIVATE KEY", ed.as_ref())),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = r#"
[server]
admin_listen = ""
[[keys]]
id = "hs"
algorithm = "HS256"
secret_file = "hs.secret"
sign = true
[[keys]]
id = "rs"
algorithm = "RS256"
private_key = "rs.pem"
[[keys]]
id = "es"
algorithm = "ES256"
private_key = "es.pem"
[[keys]]
id = "ed"
algorithm = "EdDSA"
private_key = "ed.pem"
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
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let snap = Snapshot::load(&path).unwrap();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "iss": "gatehouse", "aud": "api", "sub": "42", "exp": exp,
        "roles": ["user"], "email": "alice@example.com",
    });
    let tokens = [
        (
            Algorithm::HS256,
            "hs",
            EncodingKey::from_secret(SECRET.as_bytes()),
        ),
        (
            Algorithm::RS256,
            "rs",
            EncodingKey::from_rsa_pem(files[1].1.as_bytes()).unwrap(),
        ),
        (
            Algorithm::ES256,
            "es",
            EncodingKey::from_ec_pem(files[2].1.as_bytes()).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            "ed",
            EncodingKey::from_ed_pem(files[3].1.as_bytes()).unwrap(),
        ),
    ]
    .into_iter()
    .map(|(alg, kid, key)| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        (alg, jsonwebtoken::encode(&h, &claims, &key).unwrap())
    })
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

    let claims = Arc::new(snap.verifier.verify(hs).unwrap());
    snap.cache.insert(hs, Arc::clone(&claims));
    c.bench_function("cache_hit", |b| b.iter(|| snap.cache.get(black_box(hs))));

    // A full cache of 1,000 taking a new token on every request (the miss
    // path of `TOKEN_POOL=20000` with a small cache): insert plus eviction.
    let small = ClaimsCache::new(1000, Duration::from_secs(300));
    let keys: Vec<String> = (0..20_000).map(|i| format!("{hs}{i}")).collect();
    let mut next = keys.iter().cycle();
    c.bench_function("cache_insert_evicting", |b| {
        b.iter(|| small.insert(next.next().unwrap(), Arc::clone(&claims)))
    });

    let via = HeaderValue::from_static("1.1 gatehouse");
    let peer_value = HeaderValue::from_static("127.0.0.1");
    let down = Downstream {
        peer_value: &peer_value,
        peer: IpAddr::from([127, 0, 0, 1]),
        trusted: false,
        via: &via,
    };
    let host = HeaderValue::from_static("api.example.com");
    c.bench_function("header_rewrite", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| {
                strip_hop_by_hop(h, false);
                set_forwarding(h, &down, Some(&host));
                set_identity(h, snap.verifier.identity(), Some(&claims));
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
