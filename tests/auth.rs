//! Authentication and channel policies over real HTTP: who may subscribe and publish where,
//! with which credential, and that identity always comes from the credential.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::{API_KEY, Proto, SECRET, TempDir, TestServer, now, token, token_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RSA_PRIVATE: &str = include_str!("data/rsa-test-private.pem");
const RSA_PUBLIC: &str = include_str!("data/rsa-test-public.pem");

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "name": format!("User {sub}"), "exp": now() + 3600})
}

fn bearer(token: &str) -> (String, String) {
    ("authorization".to_owned(), format!("Bearer {token}"))
}

/// Subscribes with the given headers and returns the status and error code.
async fn try_subscribe(server: &TestServer, query: &str, headers: &[(String, String)]) -> (u16, String) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let resp = server.client(Proto::H1).open_events(query, &h).await;
    let status = resp.status().as_u16();
    if status == 200 {
        return (200, String::new());
    }
    let (_, body) = support::read_json(resp).await;
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_user_subscribes_to_their_own_channel_and_never_to_another_users() {
    let server = TestServer::secured(|_| {}).await;
    let me = [bearer(&token("42"))];
    assert_eq!(try_subscribe(&server, "channel=user:42", &me).await.0, 200);
    assert_eq!(try_subscribe(&server, "channel=user:43", &me).await, (403, "forbidden".into()));
    assert_eq!(try_subscribe(&server, "channel=user:42", &[]).await, (401, "unauthorized".into()));
    assert_eq!(try_subscribe(&server, "channel=channel:general", &[]).await, (401, "unauthorized".into()));
    // One forbidden channel refuses the whole stream.
    assert_eq!(try_subscribe(&server, "channel=channel:general&channel=user:43", &me).await.0, 403);
}

#[tokio::test]
async fn bad_expired_forged_and_unsigned_tokens_are_refused() {
    let server = TestServer::secured(|_| {}).await;
    let q = "channel=channel:general";
    let expired = token_with(json!({"sub": "1", "exp": now() - 120}));
    assert_eq!(try_subscribe(&server, q, &[bearer(&expired)]).await, (401, "token_expired".into()));
    let early = token_with(json!({"sub": "1", "exp": now() + 3600, "nbf": now() + 600}));
    assert_eq!(try_subscribe(&server, q, &[bearer(&early)]).await, (401, "invalid_token".into()));
    let forged = encode(&Header::default(), &claims("1"), &EncodingKey::from_secret(b"another-secret-entirely"))
        .unwrap_or_default();
    assert_eq!(try_subscribe(&server, q, &[bearer(&forged)]).await, (401, "invalid_token".into()));
    let no_exp = token_with(json!({"sub": "1"}));
    assert_eq!(try_subscribe(&server, q, &[bearer(&no_exp)]).await, (401, "invalid_token".into()));
    let no_sub = token_with(json!({"exp": now() + 3600}));
    assert_eq!(try_subscribe(&server, q, &[bearer(&no_sub)]).await, (401, "invalid_token".into()));
    // `alg: none`: a header and claims with an empty signature.
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims("1")));
    assert_eq!(try_subscribe(&server, q, &[bearer(&unsigned)]).await, (401, "invalid_token".into()));
    assert_eq!(try_subscribe(&server, q, &[bearer("garbage")]).await, (401, "invalid_token".into()));
    let basic = [("authorization".to_owned(), "Basic dXNlcjpwYXNz".to_owned())];
    assert_eq!(try_subscribe(&server, q, &basic).await, (401, "unauthorized".into()));
}

/// Subscribes with a bearer token and returns the status, error code and message.
async fn refusal(server: &TestServer, token: &str) -> (u16, String, String) {
    let resp = server
        .client(Proto::H1)
        .open_events("channel=channel:general", &[("authorization", &format!("Bearer {token}"))])
        .await;
    let status = resp.status().as_u16();
    if status == 200 {
        return (200, String::new(), String::new());
    }
    let (_, body) = support::read_json(resp).await;
    let text = |k: &str| body["error"][k].as_str().unwrap_or_default().to_owned();
    (status, text("code"), text("message"))
}

#[tokio::test]
async fn refused_tokens_get_heralds_own_message_for_each_case_never_the_parsers_words() {
    let server = TestServer::secured(|_| {}).await;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims("1")));
    let hs512 = encode(&Header::new(Algorithm::HS512), &claims("1"), &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap_or_default();
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &claims("1"),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_default();
    let forged = encode(&Header::default(), &claims("1"), &EncodingKey::from_secret(b"another-secret-entirely"))
        .unwrap_or_default();
    let cases = [
        (token_with(json!({"sub": "1", "exp": now() - 120})), "token_expired", "the token has expired"),
        (forged, "invalid_token", "the token's signature does not verify"),
        (unsigned, "invalid_token", "the token's algorithm is not accepted here"),
        (hs512, "invalid_token", "the token's algorithm is not accepted here"),
        (rs256, "invalid_token", "the token's algorithm is not accepted here"),
        ("garbage".to_owned(), "invalid_token", "the token is not a well-formed JWT"),
        (token_with(json!({"exp": now() + 60})), "invalid_token", "the token lacks the required `sub` claim"),
        (token_with(json!({"sub": "1"})), "invalid_token", "the token lacks the required `exp` claim"),
        (
            token_with(json!({"sub": "1", "exp": now() + 3600, "nbf": now() + 600})),
            "invalid_token",
            "the token is not valid yet (`nbf`)",
        ),
        (token_with(json!({"sub": 7, "exp": now() + 60})), "invalid_token", "the token's claims are malformed"),
        (
            token_with(json!({"sub": "1", "exp": now() + 60, "subscribe": "channel:*"})),
            "invalid_token",
            "the token's claims are malformed",
        ),
        (
            token_with(json!({"sub": "a b", "exp": now() + 60})),
            "invalid_token",
            "the token's `sub` must be 1 to 128 ASCII letters, digits or `_ - . @ = +`",
        ),
    ];
    for (token, code, message) in cases {
        assert_eq!(refusal(&server, &token).await, (401, code.to_owned(), message.to_owned()), "{token}");
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_public_keys_and_cannot_be_confused_with_hs256() {
    let tmp = TempDir::new();
    let ec = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let (rsa_path, ec_path) = (tmp.path.join("rsa.pem"), tmp.path.join("ec.pem"));
    std::fs::write(&rsa_path, RSA_PUBLIC).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&ec_path, ec.public_key_pem()).unwrap_or_else(|e| panic!("{e}"));
    let server = TestServer::with(|c| c.auth.jwt_public_keys = vec![rsa_path.clone(), ec_path.clone()]).await;
    let q = "channel=channel:general";

    let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let rs = encode(&Header::new(Algorithm::RS256), &claims("r"), &rsa_key).unwrap_or_default();
    assert_eq!(try_subscribe(&server, q, &[bearer(&rs)]).await.0, 200, "RS256");
    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let es = encode(&Header::new(Algorithm::ES256), &claims("e"), &ec_key).unwrap_or_default();
    assert_eq!(try_subscribe(&server, q, &[bearer(&es)]).await.0, 200, "ES256");

    // Algorithm confusion: HS256 "signed" with a public key as the secret.
    for public in [RSA_PUBLIC.to_owned(), ec.public_key_pem()] {
        let confused =
            encode(&Header::new(Algorithm::HS256), &claims("x"), &EncodingKey::from_secret(public.as_bytes()))
                .unwrap_or_default();
        assert_eq!(try_subscribe(&server, q, &[bearer(&confused)]).await, (401, "invalid_token".into()));
    }
    // An RS256 header over an ES256 signature is refused too.
    let mut parts: Vec<String> = es.split('.').map(str::to_owned).collect();
    parts[0] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    assert_eq!(try_subscribe(&server, q, &[bearer(&parts.join("."))]).await.0, 401);
}

/// A one-route HTTP server that serves a JWKS document and counts the fetches.
async fn jwks_server(doc: Arc<std::sync::Mutex<Value>>, fetches: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let doc = doc.clone();
            let fetches = fetches.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = doc.lock().map(|d| d.to_string()).unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A node that takes tokens signed by the keys of the JWKS at `addr`, and may refetch it for
/// any token (no refetch gap).
async fn jwks_node(addr: std::net::SocketAddr) -> TestServer {
    TestServer::with(|c| {
        c.auth.jwks_url = Some(format!("http://{addr}/.well-known/jwks.json"));
        c.auth.jwks_refetch_gap = std::time::Duration::ZERO;
    })
    .await
}

fn ec_jwk(key: &rcgen::KeyPair, kid: &str) -> Value {
    let raw = key.public_key_raw(); // 0x04 || X || Y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": kid, "alg": "ES256", "use": "sig"})
}

fn es256(key: &rcgen::KeyPair, kid: &str, sub: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    encode(&header, &claims(sub), &enc).unwrap_or_default()
}

#[tokio::test]
async fn jwks_keys_are_fetched_cached_and_refetched_for_an_unknown_kid() {
    let k1 = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let k2 = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let doc = Arc::new(std::sync::Mutex::new(json!({"keys": [ec_jwk(&k1, "k1")]})));
    let fetches = Arc::new(AtomicUsize::new(0));
    let addr = jwks_server(doc.clone(), fetches.clone()).await;
    let server = jwks_node(addr).await;
    let q = "channel=channel:general";
    assert_eq!(try_subscribe(&server, q, &[bearer(&es256(&k1, "k1", "a"))]).await.0, 200);
    assert_eq!(try_subscribe(&server, q, &[bearer(&es256(&k1, "k1", "b"))]).await.0, 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the second token used the cached keys");

    // The key server rotates in k2; a token naming k2 makes Herald refetch.
    if let Ok(mut d) = doc.lock() {
        *d = json!({"keys": [ec_jwk(&k1, "k1"), ec_jwk(&k2, "k2")]});
    }
    assert_eq!(try_subscribe(&server, q, &[bearer(&es256(&k2, "k2", "c"))]).await.0, 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // A kid nobody has: refused after one more fetch.
    assert_eq!(try_subscribe(&server, q, &[bearer(&es256(&k2, "nope", "d"))]).await, (401, "invalid_token".into()));
}

#[tokio::test]
async fn a_token_whose_key_is_cached_is_not_held_up_by_a_hung_fetch_for_a_forged_kid() {
    let k1 = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let doc = json!({"keys": [ec_jwk(&k1, "k1")]}).to_string();
    // A key server that answers its first request and hangs on the others, holding each
    // connection until Herald lets go of it (`open` counts the ones it holds).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (fetches, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let arrived = Arc::new(tokio::sync::Notify::new());
    tokio::spawn({
        let (fetches, open, arrived) = (fetches.clone(), open.clone(), arrived.clone());
        async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (doc, open, arrived) = (doc.clone(), open.clone(), arrived.clone());
                let first = fetches.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    if first {
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", doc.len());
                        let _ = tcp.write_all(format!("{head}{doc}").as_bytes()).await;
                        return;
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    arrived.notify_one();
                    while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    });
    let server = jwks_node(addr).await;
    let q = "channel=channel:general";
    assert_eq!(try_subscribe(&server, q, &[bearer(&es256(&k1, "k1", "a"))]).await.0, 200);
    // A token naming a kid nobody has sends Herald back to the key server, which hangs.
    let forged = tokio::spawn({
        let (addr, token) = (server.addr, es256(&k1, "forged", "eve"));
        async move {
            let mut client =
                TestServer::client_at(addr, Proto::H1).with_header("authorization", &format!("Bearer {token}"));
            client.open_events(q, &[]).await.status()
        }
    });
    support::within("the fetch for the forged kid to reach the key server", arrived.notified()).await;
    // Meanwhile a token of the cached key is verified, while that fetch is still held open.
    assert_eq!(try_subscribe(&server, q, &[bearer(&es256(&k1, "k1", "b"))]).await.0, 200);
    assert_eq!(open.load(Ordering::SeqCst), 1, "the hung fetch was still under way");
    assert!(!forged.is_finished());
    forged.abort();
}

#[tokio::test]
async fn a_key_server_that_is_down_refuses_tokens_with_503_counted_as_auth_unavailable() {
    // A port nothing listens on: connecting is refused at once.
    let closed =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap_or_else(|e| panic!("{e}"));
    let server = jwks_node(closed).await;
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let token = es256(&key, "k1", "a");
    let q = "channel=channel:general";
    assert_eq!(try_subscribe(&server, q, &[bearer(&token)]).await, (503, "auth_unavailable".into()));
    let mut publisher = server.client(Proto::H1).with_header("authorization", &format!("Bearer {token}"));
    let (status, body) =
        publisher.post_json("/api/publish", &json!({"channel": "channel:general", "type": "chat"})).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (503, Some("auth_unavailable")));

    let mut m = server.client(Proto::H1);
    for kind in ["publish", "subscribe"] {
        let series = |reason: &str| format!("herald_{kind}_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(m.metric(&series("auth_unavailable")).await, 1.0, "{kind}");
        assert_eq!(m.metric(&series("engine_unavailable")).await, 0.0, "{kind}");
    }
}

const APP: &str = "http://app.test:5173";

/// The CORS headers of an answer: allowed origin, credentials, vary.
fn cors_of(resp: &hyper::Response<hyper::body::Incoming>) -> (Option<String>, Option<String>, String) {
    let get = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let vary = resp.headers().get_all("vary").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    (get("access-control-allow-origin"), get("access-control-allow-credentials"), vary)
}

async fn preflight(server: &TestServer, origin: &str, path: &str) -> hyper::Response<hyper::body::Incoming> {
    let mut c = server.client(Proto::H1);
    let req = c
        .request("OPTIONS", path)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    c.send(req).await
}

#[tokio::test]
async fn a_listed_origin_may_call_herald_with_credentials_and_no_other_origin_may() {
    let server = TestServer::secured(|c| c.cors_origins = vec![APP.to_owned()]).await;

    let ok = preflight(&server, APP, "/api/publish").await;
    assert!(ok.status().is_success(), "preflight: {}", ok.status());
    assert_eq!(cors_of(&ok).0.as_deref(), Some(APP));
    assert_eq!(cors_of(&ok).1.as_deref(), Some("true"));
    let allowed = |name: &str| ok.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase();
    assert!(allowed("access-control-allow-methods").contains("post"), "{:?}", ok.headers());
    assert!(allowed("access-control-allow-headers").contains("authorization"), "{:?}", ok.headers());

    let other = preflight(&server, "http://evil.test", "/api/publish").await;
    assert_eq!(cors_of(&other).0, None, "an unlisted origin is not allowed");

    // A stream (HTTP/1.1 takes the lean path, h2c goes through hyper) and a publish from the page.
    let me = [("origin", APP)];
    for proto in [Proto::H1, Proto::H2c] {
        let stream = server.client(proto).user("u1").subscribe("channel=user:u1", &me).await;
        assert!(!stream.connected_id().is_empty(), "a cross-origin stream opens");
    }
    let stream = server.client(Proto::H1).user("u1").open_events("channel=user:u1", &me).await;
    let (origin, credentials, vary) = cors_of(&stream);
    assert_eq!((origin.as_deref(), credentials.as_deref()), (Some(APP), Some("true")));
    assert!(vary.to_lowercase().contains("origin"), "vary: {vary}");
    let h2 = server.client(Proto::H2c).user("u1").open_events("channel=user:u1", &me).await;
    assert_eq!(cors_of(&h2).0.as_deref(), Some(APP));
    // A publish from the page: on HTTP/1.1 the lean publish path leaves it to the CORS layer.
    for proto in [Proto::H1, Proto::H2c] {
        let mut page = server.client(proto).user("u1");
        let body = json!({"channel": "channel:general", "type": "chat"}).to_string();
        let req = page
            .request("POST", "/api/publish")
            .header("origin", APP)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap_or_else(|e| panic!("{e}"));
        let published = page.send(req).await;
        assert_eq!(published.status(), 200, "{proto:?} publish");
        let (origin, credentials, _) = cors_of(&published);
        assert_eq!((origin.as_deref(), credentials.as_deref()), (Some(APP), Some("true")), "{proto:?} publish");
    }

    // Errors carry the headers too, so the page can read them; the exposed request id with them.
    let refused = server.client(Proto::H1).open_events("channel=user:u1", &me).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(cors_of(&refused).0.as_deref(), Some(APP));
    let exposed = refused.headers().get("access-control-expose-headers").and_then(|v| v.to_str().ok());
    assert!(exposed.is_some_and(|v| v.contains("x-request-id")), "{exposed:?}");
    let foreign =
        server.client(Proto::H1).user("u1").open_events("channel=user:u1", &[("origin", "http://evil.test")]).await;
    assert_eq!(cors_of(&foreign).0, None);
}

#[tokio::test]
async fn a_listed_origin_is_matched_whatever_the_case_it_was_configured_in() {
    // Scheme and host are case-insensitive and a browser sends them in lowercase; the cookie
    // guard already took such an origin, and CORS must take it too, or the page could not
    // read what the guard let through.
    let server = TestServer::secured(|c| c.cors_origins = vec!["http://App.Test:5173".to_owned()]).await;
    let ok = preflight(&server, APP, "/api/publish").await;
    assert!(ok.status().is_success(), "preflight: {}", ok.status());
    assert_eq!((cors_of(&ok).0.as_deref(), cors_of(&ok).1.as_deref()), (Some(APP), Some("true")));
    for proto in [Proto::H1, Proto::H2c] {
        let stream = server.client(proto).user("u1").open_events("channel=user:u1", &[("origin", APP)]).await;
        assert_eq!(stream.status(), 200, "{proto:?}");
        assert_eq!(cors_of(&stream).0.as_deref(), Some(APP), "{proto:?}");
    }
    let other = preflight(&server, "http://app.test:5174", "/api/publish").await;
    assert_eq!(cors_headers(&other), Vec::<String>::new(), "another port is another origin");
}

/// The names of an answer's `access-control-*` headers.
fn cors_headers(resp: &hyper::Response<hyper::body::Incoming>) -> Vec<String> {
    resp.headers().keys().map(|k| k.as_str().to_owned()).filter(|k| k.starts_with("access-control-")).collect()
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_header_at_all_not_even_allow_credentials() {
    let server = TestServer::secured(|c| c.cors_origins = vec![APP.to_owned()]).await;
    let evil = [("origin", "http://evil.test")];
    for proto in [Proto::H1, Proto::H2c] {
        let stream = server.client(proto).user("u1").open_events("channel=user:u1", &evil).await;
        assert_eq!((stream.status().as_u16(), cors_headers(&stream)), (200, vec![]), "{proto:?} stream");
        let refused = server.client(proto).open_events("channel=user:u1", &evil).await;
        assert_eq!((refused.status().as_u16(), cors_headers(&refused)), (401, vec![]), "{proto:?} refusal");
        let mut c = server.client(proto).backend();
        let req = c
            .request("POST", "/api/publish")
            .header("origin", "http://evil.test")
            .header("content-type", "application/json")
            .body(json!({"channel": "channel:x", "type": "chat"}).to_string().into())
            .unwrap_or_else(|e| panic!("{e}"));
        let published = c.send(req).await;
        assert_eq!((published.status().as_u16(), cors_headers(&published)), (200, vec![]), "{proto:?} publish");
        // A request with no `Origin` (same-origin or not a browser) needs none either.
        let plain = server.client(proto).user("u1").open_events("channel=user:u1", &[]).await;
        assert_eq!(cors_headers(&plain), Vec::<String>::new(), "{proto:?} no origin");
    }
    let unlisted = preflight(&server, "http://evil.test", "/api/publish").await;
    assert_eq!((unlisted.status().as_u16(), cors_headers(&unlisted)), (405, vec![]), "an unlisted preflight");
    // The listed origin keeps its headers.
    let listed = preflight(&server, APP, "/api/publish").await;
    assert!(cors_headers(&listed).contains(&"access-control-allow-credentials".to_owned()), "{:?}", listed.headers());
}

#[tokio::test]
async fn cors_is_off_by_default_and_a_wildcard_never_allows_credentials() {
    let off = TestServer::start().await;
    let resp = off.client(Proto::H1).open_events("channel=channel:general", &[("origin", APP)]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(cors_of(&resp).0, None);
    assert_eq!(preflight(&off, APP, "/api/publish").await.status(), 405, "no preflight answer without cors_origins");

    let any = TestServer::with(|c| c.cors_origins = vec!["*".to_owned()]).await;
    let resp = any.client(Proto::H1).open_events("channel=channel:general", &[("origin", APP)]).await;
    assert_eq!(cors_of(&resp).0.as_deref(), Some("*"));
    assert_eq!(cors_of(&resp).1, None, "`*` never with credentials");
}

#[tokio::test]
async fn issuer_and_audience_are_required_and_checked_when_configured() {
    let server = TestServer::secured(|c| {
        c.auth.issuer = Some("https://id.example".into());
        c.auth.audience = Some("herald".into());
    })
    .await;
    let q = "channel=channel:general";
    let good = token_with(json!({"sub": "1", "exp": now() + 60, "iss": "https://id.example", "aud": "herald"}));
    assert_eq!(try_subscribe(&server, q, &[bearer(&good)]).await.0, 200);
    let wrong_aud = token_with(json!({"sub": "1", "exp": now() + 60, "iss": "https://id.example", "aud": "other"}));
    assert_eq!(try_subscribe(&server, q, &[bearer(&wrong_aud)]).await, (401, "invalid_token".into()));
    // Required, not only checked when present.
    let no_iss = token_with(json!({"sub": "1", "exp": now() + 60, "aud": "herald"}));
    let no_aud = token_with(json!({"sub": "1", "exp": now() + 60, "iss": "https://id.example"}));
    assert_eq!(
        refusal(&server, &no_iss).await,
        (401, "invalid_token".into(), "the token lacks the required `iss` claim".into())
    );
    assert_eq!(
        refusal(&server, &no_aud).await,
        (401, "invalid_token".into(), "the token lacks the required `aud` claim".into())
    );
    let wrong_iss = token_with(json!({"sub": "1", "exp": now() + 60, "iss": "https://evil", "aud": "herald"}));
    assert_eq!(
        refusal(&server, &wrong_iss).await,
        (401, "invalid_token".into(), "the token's issuer (`iss`) is not the one configured".into())
    );
    // Without them configured, neither claim is needed.
    let plain = TestServer::secured(|_| {}).await;
    assert_eq!(try_subscribe(&plain, "channel=channel:general", &[bearer(&token("1"))]).await.0, 200);
}

#[tokio::test]
async fn a_token_in_the_configured_cookie_authenticates_a_stream() {
    let server = TestServer::secured(|c| c.auth.cookie_name = "session_jwt".into()).await;
    let cookie = [("cookie".to_owned(), format!("theme=dark; session_jwt={}", token("7")))];
    assert_eq!(try_subscribe(&server, "channel=user:7", &cookie).await.0, 200);
    let wrong_name = [("cookie".to_owned(), format!("herald_token={}", token("7")))];
    assert_eq!(try_subscribe(&server, "channel=user:7", &wrong_name).await.0, 401);
    let bad = [("cookie".to_owned(), "session_jwt=garbage".to_owned())];
    assert_eq!(try_subscribe(&server, "channel=user:7", &bad).await, (401, "invalid_token".into()));
}

#[tokio::test]
async fn a_ticket_opens_one_stream_as_its_user_and_only_once() {
    let server = TestServer::secured(|_| {}).await;
    let mut user = server.client(Proto::H1).user("42");
    let (status, body) = user.post_raw("/api/tickets", "").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["expiresIn"], 30, "the default lifetime is 30 s");
    let ticket = body["ticket"].as_str().unwrap_or_default().to_owned();
    assert!(ticket.len() >= 40, "unguessable: {ticket}");

    let mut anonymous = server.client(Proto::H1);
    let mut stream = anonymous.subscribe(&format!("channel=user:42&ticket={ticket}"), &[]).await;
    server.client(Proto::H1).backend().publish(&json!({"channel": "user:42", "type": "notification", "n": 1})).await;
    assert_eq!(stream.expect().await.data["n"], 1);
    // Single use, even for the same user and channel.
    let (status, code) = try_subscribe(&server, &format!("channel=user:42&ticket={ticket}"), &[]).await;
    assert_eq!((status, code.as_str()), (401, "invalid_ticket"));
    // A ticket only ever stands for its own user.
    let (_, body) = user.post_raw("/api/tickets", "").await;
    let other = body["ticket"].as_str().unwrap_or_default();
    assert_eq!(try_subscribe(&server, &format!("channel=user:43&ticket={other}"), &[]).await.0, 403);
    // Tickets need a user: not anonymous, not an API key.
    assert_eq!(server.client(Proto::H1).post_raw("/api/tickets", "").await.0, 401);
    assert_eq!(server.client(Proto::H1).backend().post_raw("/api/tickets", "").await.0, 403);
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let server = TestServer::secured(|c| c.auth.ticket_ttl = std::time::Duration::from_nanos(1)).await;
    let (_, body) = server.client(Proto::H1).user("1").post_raw("/api/tickets", "").await;
    let ticket = body["ticket"].as_str().unwrap_or_default();
    assert_eq!(
        try_subscribe(&server, &format!("channel=user:1&ticket={ticket}"), &[]).await,
        (401, "invalid_ticket".into())
    );
}

#[tokio::test]
async fn api_keys_publish_anywhere_their_scope_allows_and_nowhere_else() {
    let server = TestServer::secured(|c| {
        c.api_keys.push(herald::config::ApiKeyConfig {
            name: "news".into(),
            key: "news-key-0123456789abcdef".into(),
            channels: vec!["channel:news-*".into()],
            scopes: vec![herald::config::Scope::Publish],
        })
    })
    .await;
    let mut stream = server.client(Proto::H1).user("42").subscribe("channel=user:42", &[]).await;
    let mut backend = server.client(Proto::H1).with_header("authorization", &format!("apikey {API_KEY}"));
    backend.publish(&json!({"channel": "user:42", "type": "badge_update", "count": 3})).await;
    assert_eq!(stream.expect().await.data["count"], 3);

    let mut news = server.client(Proto::H1).with_header("x-api-key", "news-key-0123456789abcdef");
    assert_eq!(news.post_json("/api/publish", &json!({"channel": "channel:news-1", "type": "update"})).await.0, 200);
    let (status, body) = news.post_json("/api/publish", &json!({"channel": "user:42", "type": "update"})).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (403, Some("forbidden")));
    let mut wrong = server.client(Proto::H1).with_header("x-api-key", "not-a-key-at-all-0000");
    let (status, body) = wrong.post_json("/api/publish", &json!({"channel": "channel:news-1", "type": "update"})).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    // Users never publish on user channels, not even their own.
    let (status, _) = server
        .client(Proto::H1)
        .user("42")
        .post_json("/api/publish", &json!({"channel": "user:42", "type": "x"}))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn published_events_carry_the_identity_of_the_token_not_of_the_body() {
    let server = TestServer::secured(|_| {}).await;
    let mut stream = server.client(Proto::H2c).user("9").subscribe("channel=channel:general", &[]).await;
    let online = stream.expect().await;
    assert_eq!((online.data["type"].as_str(), online.data["userId"].as_str()), (Some("presence"), Some("9")));
    let mut ann = server.client(Proto::H2c).user("ann");
    ann.publish(
        &json!({"channel": "channel:general", "type": "chat", "content": "hi", "userId": "admin", "userName": "Admin"}),
    )
    .await;
    let ev = stream.expect().await;
    assert_eq!((ev.data["userId"].as_str(), ev.data["userName"].as_str()), (Some("ann"), Some("User ann")));
    // A backend's events carry no user identity at all.
    server
        .client(Proto::H2c)
        .backend()
        .publish(&json!({"channel": "channel:general", "type": "chat", "userId": "admin"}))
        .await;
    assert!(stream.expect().await.data.get("userId").is_none());
}

#[tokio::test]
async fn grants_in_the_token_narrow_what_a_user_reaches() {
    let server = TestServer::secured(|_| {}).await;
    let limited = token_with(json!({"sub": "5", "exp": now() + 60, "subscribe": ["channel:team-*"], "publish": []}));
    let h = [bearer(&limited)];
    assert_eq!(try_subscribe(&server, "channel=channel:team-a", &h).await.0, 200);
    assert_eq!(try_subscribe(&server, "channel=channel:general", &h).await.0, 403);
    assert_eq!(try_subscribe(&server, "channel=user:5", &h).await.0, 200, "grants never close the user's own channel");
    let mut c = server.client(Proto::H1).with_header("authorization", &format!("Bearer {limited}"));
    assert_eq!(c.post_json("/api/publish", &json!({"channel": "channel:team-a", "type": "chat"})).await.0, 403);
}

#[tokio::test]
async fn configured_namespaces_apply_their_own_policy_and_unknown_ones_are_refused() {
    let server = TestServer::secured(|c| {
        c.namespaces.insert(
            "incidents".into(),
            herald::config::NamespaceConfig { subscribe: Some(herald::config::Access::Anyone), ..Default::default() },
        );
    })
    .await;
    assert_eq!(try_subscribe(&server, "channel=incidents:INC-1", &[]).await.0, 200, "anonymous allowed here");
    assert_eq!(try_subscribe(&server, "channel=rooms:x", &[]).await, (400, "invalid_channel".into()));
    assert_eq!(try_subscribe(&server, "channel=system", &[]).await.0, 401, "system needs a user when auth is on");
    let mut user = server.client(Proto::H1).user("1");
    assert_eq!(user.post_json("/api/publish", &json!({"channel": "system", "type": "system"})).await.0, 403);
    assert_eq!(
        user.post_json("/api/publish", &json!({"channel": "incidents:INC-1", "type": "incident.created"})).await.0,
        200
    );
}

#[tokio::test]
async fn dev_mode_lets_anonymous_clients_use_rooms_and_system_but_not_user_channels() {
    let server = TestServer::start().await;
    let mut anon = server.client(Proto::H1);
    let mut stream = anon.subscribe("channel=channel:general&channel=system", &[]).await;
    anon.publish(&json!({"channel": "system", "type": "system", "message": "hello"})).await;
    assert_eq!(stream.expect().await.data["message"], "hello");
    assert_eq!(try_subscribe(&server, "channel=user:1", &[]).await.0, 401);
}

#[test]
fn without_auth_a_public_address_is_refused_unless_anonymous_is_allowed() {
    let public =
        herald::Config { listen: "0.0.0.0:8080".parse().unwrap_or_else(|e| panic!("{e}")), ..Default::default() };
    let err = public.validate().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("--allow-anonymous"), "{err}");
    assert!(herald::Config { allow_anonymous: true, ..public.clone() }.validate().is_ok());
    let mut secured = public;
    secured.auth.jwt_secret = Some(SECRET.to_owned());
    assert!(secured.validate().is_ok());
}

#[tokio::test]
async fn a_cookie_authenticated_publish_must_be_json_so_it_cannot_be_forged_cross_site() {
    let server = TestServer::secured(|_| {}).await;
    let mut stream = server.client(Proto::H1).user("9").subscribe("channel=channel:csrf", &[]).await;
    assert_eq!(stream.expect().await.data["type"], "presence", "user 9's own arrival");
    let cookie = format!("herald_token={}", token("ann"));
    let body = json!({"channel": "channel:csrf", "type": "chat", "content": "forged?"}).to_string();
    let mut c = server.client(Proto::H1).with_header("cookie", &cookie);
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let req = c.request("POST", "/api/publish").header("content-type", content_type).body(body.clone().into());
        let resp = c.send(req.unwrap_or_else(|e| panic!("{e}"))).await;
        let (status, err) = support::read_json(resp).await;
        assert_eq!((status.as_u16(), err["error"]["code"].as_str()), (415, Some("json_required")), "{content_type}");
    }
    let (status, _) = c.post_raw("/api/publish", body).await; // application/json
    assert_eq!(status, 200);
    assert_eq!(stream.expect().await.data["userId"], "ann", "the only event that arrives is the JSON one");
}

const STATS_KEY: &str = "stats-key-0123456789abcdef";

#[tokio::test]
async fn a_stats_only_key_reads_the_admin_view_and_is_refused_everything_else() {
    let server = TestServer::secured(|c| {
        c.admin = true;
        c.admin_interval = std::time::Duration::from_millis(50);
        let toml = format!("[[api_keys]]\nname = \"dashboard\"\nkey = \"{STATS_KEY}\"\nscopes = [\"admin\"]\n");
        c.api_keys.extend(herald::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}")).api_keys);
    })
    .await;
    let stats = || server.client(Proto::H1).with_header("x-api-key", STATS_KEY);
    // What the admin page does: the stats stream, and the status.
    let mut view = stats().subscribe("channel=admin:nodes", &[]).await;
    assert_eq!(view.expect().await.data["type"], "node_stats");
    assert_eq!(stats().get_json("/api/status").await.0, 200);

    // Nothing else.
    let user = server.client(Proto::H1).user("bob").subscribe("channel=user:bob", &[]).await;
    let conn = user.connection_id();
    let code = |(status, body): (hyper::StatusCode, Value)| {
        (status.as_u16(), body["error"]["code"].as_str().map(str::to_owned))
    };
    let forbidden = (403, Some("forbidden".to_owned()));
    for channel in ["channel:x", "system", "user:bob", "admin:nodes"] {
        let event = json!({"channel": channel, "type": "chat"});
        assert_eq!(code(stats().post_json("/api/publish", &event).await), forbidden, "publish on {channel}");
    }
    for channel in ["channel:x", "user:bob", "system"] {
        assert_eq!(
            try_subscribe(&server, &format!("channel={channel}"), &[("x-api-key".into(), STATS_KEY.into())]).await,
            (403, "forbidden".into()),
            "subscribe to {channel}"
        );
    }
    let path = format!("/api/connections/{conn}/channels");
    for channel in ["channel:x", "admin:nodes"] {
        assert_eq!(code(stats().post_json(&path, &json!({"channel": channel})).await), forbidden, "join {channel}");
    }
    assert_eq!(code(stats().delete(&format!("{path}/user:bob")).await), forbidden, "leave");
    assert_eq!(code(stats().post_raw("/api/tickets", "").await), forbidden, "ticket");
}
