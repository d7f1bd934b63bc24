//! The token service's costs, each alone: minting a token pair per signing
//! algorithm, verifying a refresh token, and one password check (argon2id
//! at the users-file parameters, bcrypt cost 12). The revocation check the
//! proxy path pays is in `hot_path`. `cargo bench --bench token_service`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::auth::issue::{self, Grant};
use gatehouse::login::PasswordHash;
use gatehouse::state::Snapshot;
use serde_json::Map;

#[path = "../tests/support/mod.rs"]
mod support;

/// A snapshot that signs with `key`: one of the key files `support` writes.
fn snapshot(dir: &std::path::Path, key: &str) -> Snapshot {
    let (algorithm, material) = match key {
        "hs" => ("HS256", "secret_file = \"hs.secret\""),
        "rs" => ("RS256", "private_key = \"rs.pem\""),
        "es" => ("ES256", "private_key = \"es.pem\""),
        _ => ("EdDSA", "private_key = \"ed.pem\""),
    };
    let config = format!(
        "[server]\nadmin_listen = \"\"\n[[keys]]\nid = \"{key}\"\nalgorithm = \"{algorithm}\"\n\
         {material}\nsign = true\n[[upstreams]]\nname = \"up\"\n\
         targets = [\"builtin:echo\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n"
    );
    let path = support::write_config(dir, &config);
    Snapshot::load(&path).unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot(dir.path(), "ed");
    let tokens = &snap.config.tokens;
    let roles = vec!["user".to_string()];
    let claims = Map::new();
    let grant = Grant {
        subject: "42",
        roles: &roles,
        claims: &claims,
        ttl: Duration::from_secs(900),
    };
    let now = issue::now();

    // A login or refresh signs one access and one refresh token.
    let mut g = c.benchmark_group("sign_pair");
    for key in ["hs", "ed", "es", "rs"] {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(dir.path(), key);
        let signer = snap.keys.signer().unwrap();
        let alg = format!("{:?}", signer.algorithm);
        g.bench_function(alg, |b| {
            b.iter(|| {
                let a = issue::sign_access(signer, tokens, &grant, "f.j".into(), now).unwrap();
                let r = issue::sign_refresh(signer, tokens, "42", "f", now, now).unwrap();
                (a, r)
            })
        });
    }
    g.finish();

    let refresh = issue::sign_refresh(snap.keys.signer().unwrap(), tokens, "42", "fam", now, now)
        .unwrap()
        .token;
    c.bench_function("verify_refresh/EdDSA", |b| {
        b.iter(|| snap.verifier.verify_refresh(black_box(&refresh)).unwrap())
    });

    let mut g = c.benchmark_group("password_check");
    g.sample_size(10);
    let argon = PasswordHash::parse(&gatehouse::auth::password::hash(b"pw").unwrap()).unwrap();
    g.bench_function("argon2id_m19456_t2_p1", |b| {
        b.iter(|| argon.verify(black_box(b"pw")))
    });
    let bcrypt = PasswordHash::parse(&bcrypt::hash("pw", 12).unwrap()).unwrap();
    g.bench_function("bcrypt_cost12", |b| {
        b.iter(|| bcrypt.verify(black_box(b"pw")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
