//! AWS ALB's `x-amzn-oidc-data` header (`--identity-header-format alb`):
//! an ES256 JWT whose parts are base64url *with* padding, its key a PEM
//! at a per-`kid` URL. A test key server stands in for
//! `public-keys.auth.elb.{region}.amazonaws.com` (`--alb-key-url`); the
//! header is signed the way the load balancer signs it. What must pass
//! passes; another signer, a changed payload, an expired header, an
//! unknown key and an untrusted peer do not.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_tests::{Server, ServerOptions};

const ARN: &str =
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/test/50dc6c495c0c9188";
const KID: &str = "6c9c1f65-2e43-4b0a-9c55-8f5b8f0e7a11";
const HEADER: &str = "x-amzn-oidc-data";

/// A P-256 key pair made by openssl: (private PKCS#8 PEM, public PEM).
fn key_pair(dir: &std::path::Path, name: &str) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        private.to_str().expect("utf-8"),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().expect("utf-8"),
        "-pubout",
        "-out",
        public.to_str().expect("utf-8"),
    ]);
    (
        std::fs::read(private).expect("private key"),
        std::fs::read(public).expect("public key"),
    )
}

/// Serves `GET /<kid>` → the PEM for `kid` (404 otherwise); counts requests.
async fn key_server(keys: Vec<(String, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let n = socket.read(&mut buffer).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let found = keys
                    .iter()
                    .find(|(kid, _)| path == format!("/{kid}"))
                    .map(|(_, pem)| pem.clone());
                let response = match found {
                    Some(pem) => {
                        let mut head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            pem.len()
                        )
                        .into_bytes();
                        head.extend_from_slice(&pem);
                        head
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = socket.write_all(&response).await;
            });
        }
    });
    (format!("http://{address}/{{kid}}"), served)
}

/// A header value as the load balancer makes it: padded base64url parts.
fn alb_token(
    private: &[u8],
    kid: &str,
    signer: &str,
    exp_offset: i64,
    claims: serde_json::Value,
) -> String {
    let padded = base64::engine::general_purpose::URL_SAFE;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256", "kid": kid, "signer": signer,
        "iss": "https://idp.example.test", "client": "alb-client", "exp": now + exp_offset,
    });
    let message = format!(
        "{}.{}",
        padded.encode(header.to_string()),
        padded.encode(claims.to_string())
    );
    let key = EncodingKey::from_ec_pem(private).expect("EC key");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).expect("sign");
    // The load balancer pads the signature too.
    let signature = padded.encode(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .expect("b64"),
    );
    format!("{message}.{signature}")
}

async fn me_with(server: &Server, value: &str) -> (u16, serde_json::Value) {
    let response = server
        .http
        .get(server.url("/api/v1/me"))
        .header(HEADER, value)
        .send()
        .await
        .expect("me");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn options(key_url: &str, trusted: &str) -> ServerOptions {
    ServerOptions::workers(1)
        .arg("--trusted-proxy")
        .arg(trusted)
        .arg("--identity-header")
        .arg(HEADER)
        .arg("--identity-header-format")
        .arg("alb")
        .arg("--alb-arn")
        .arg(ARN)
        .arg("--alb-region")
        .arg("eu-west-1")
        .arg("--alb-key-url")
        .arg(key_url)
        .arg("--jwt-username-claim")
        .arg("email")
}

#[tokio::test]
async fn an_alb_header_logs_its_user_in_and_forgeries_do_not() {
    let dir = tempfile::tempdir().expect("dir");
    let (private, public) = key_pair(dir.path(), "alb");
    let (other_private, _) = key_pair(dir.path(), "other");
    let (key_url, served) = key_server(vec![(KID.to_string(), public)]).await;
    let server = Server::ready(&options(&key_url, "127.0.0.1/32")).await;
    let claims = serde_json::json!({"sub": "sub-eve-1", "email": "eve@example.test"});

    let good = alb_token(&private, KID, ARN, 120, claims.clone());
    assert!(
        good.contains('='),
        "padded like the load balancer's: {good}"
    );
    let (status, user) = me_with(&server, &good).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["username"], "eve");
    // Cached: the key server is not asked again, nor for the same header.
    let (status, _) = me_with(&server, &good).await;
    assert_eq!(status, 200);
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // Another load balancer's header (signed by the right key even).
    let foreign = alb_token(&private, KID, "arn:aws:other", 120, claims.clone());
    let (status, body) = me_with(&server, &foreign).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("signer"), "{body}");
    // A payload changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = base64::engine::general_purpose::URL_SAFE
        .encode(serde_json::json!({"sub": "sub-eve-1", "email": "admin@example.test"}).to_string());
    let (status, body) = me_with(&server, &parts.join(".")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("signature"), "{body}");
    // Signed by another key under the right kid.
    let (status, _) = me_with(
        &server,
        &alb_token(&other_private, KID, ARN, 120, claims.clone()),
    )
    .await;
    assert_eq!(status, 401);
    // Expired.
    let (status, body) = me_with(
        &server,
        &alb_token(&private, KID, ARN, -3600, claims.clone()),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("expired"), "{body}");
    // A kid the key server does not know, twice: one fetch.
    let before = served.load(Ordering::SeqCst);
    let unknown = "0f0f0f0f-0000-4000-8000-000000000000";
    for _ in 0..2 {
        let (status, _) = me_with(
            &server,
            &alb_token(&other_private, unknown, ARN, 120, claims.clone()),
        )
        .await;
        assert_eq!(status, 401);
    }
    assert_eq!(served.load(Ordering::SeqCst), before + 1);
    // Junk.
    for junk in ["", "a.b", "a.b.c", "eyJ.eyJ.x"] {
        let (status, _) = me_with(&server, junk).await;
        assert!(status == 401, "{junk:?}: {status}");
    }
}

#[tokio::test]
async fn an_alb_header_from_an_untrusted_peer_is_ignored() {
    let dir = tempfile::tempdir().expect("dir");
    let (private, public) = key_pair(dir.path(), "alb");
    let (key_url, served) = key_server(vec![(KID.to_string(), public)]).await;
    let server = Server::ready(&options(&key_url, "10.0.0.0/8")).await;
    let good = alb_token(
        &private,
        KID,
        ARN,
        120,
        serde_json::json!({"sub": "s", "email": "mallory@example.test"}),
    );
    let (status, _) = me_with(&server, &good).await;
    assert_eq!(status, 401, "not from a trusted proxy: as if absent");
    assert_eq!(served.load(Ordering::SeqCst), 0, "not even looked at");
    server.log_containing("not a trusted proxy").await;
}
