mod support;

use jsonwebtoken::Algorithm;
use support::*;

#[tokio::test]
async fn harness_smoke() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n",
    ))
    .await;
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let t = sign(alg, None, &claims("alice"));
        let r = get_with_token(&gw.url("/x"), &t).await;
        assert_eq!(
            r.status,
            200,
            "{alg:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.upstream_header("x-auth-subject").as_deref(),
            Some("alice")
        );
    }
    let r = get(
        &gw.url("/stream/100"),
        &[(
            "authorization",
            &format!(
                "Bearer {}",
                sign(Algorithm::HS256, Some("hs"), &claims("a"))
            ),
        )],
    )
    .await;
    assert_eq!(r.body.len(), 100 * 1024);
}
