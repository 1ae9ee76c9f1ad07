//! A workload identity federation in miniature, on loopback: a cluster issuer that signs
//! service-account tokens and publishes its keys the way a Kubernetes API server does
//! (`/.well-known/openid-configuration` naming `/openid/v1/jwks`), and an identity provider
//! that trusts it the way Entra ID, Keycloak, Google's STS or a SPIFFE-federated server do:
//! it reads the issuer's JWKS over HTTP, and at every token request checks the JWT's
//! signature, `iss`, `sub`, `aud` and `exp` before it issues anything. The provider records
//! each token request exactly (it is a [`TokenServer`]) and refuses as real ones do:
//! `invalid_client` for a client assertion, `invalid_grant` for a jwt-bearer grant (RFC 7523
//! §3.1), `invalid_request` for a token exchange's subject token (RFC 8693 §2.2.2).
//! (`#[path = "support/idp.rs"] mod idp;` beside `mod support;`.)
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::{Recorded, Reply, TokenServer, direct_client};

pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Seconds since the epoch, as JWTs count time.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The `sub` Kubernetes gives a service account's tokens.
pub fn service_account(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

// ---------------------------------------------------------------------------------------
// The cluster issuer's key

/// How the cluster issuer signs: API servers use RSA by default, EC keys work too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    RS256,
    ES256,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A signing key with its `kid`: the cluster issuer's, or an impostor's.
pub struct IssuerKey {
    alg: Alg,
    kid: String,
    pair: Pair,
}

impl IssuerKey {
    /// A fresh key: a test generates the issuer's key, nothing is checked in.
    pub fn generate(alg: Alg, kid: &str) -> Self {
        let pair = match alg {
            Alg::RS256 => Pair::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()),
            Alg::ES256 => Pair::Ec(EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()),
        };
        Self {
            alg,
            kid: kid.to_owned(),
            pair,
        }
    }

    /// The compact JWS of `claims` (RFC 7515 §7.1), headed with this key's `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let alg = match self.alg {
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
        };
        let header = json!({ "alg": alg, "kid": self.kid, "typ": "JWT" });
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(key) => {
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out)
                    .unwrap();
                out
            }
            Pair::Ec(key) => key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", B64URL.encode(signature))
    }

    /// The public key as a JWK (RFC 7517, RFC 7518 §6).
    fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(key) => {
                let (n, e) = rsa_components(key.public_key().as_ref());
                json!({
                    "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                    "n": B64URL.encode(n), "e": B64URL.encode(e),
                })
            }
            Pair::Ec(key) => {
                // The uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = key.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
                    "x": B64URL.encode(&point[1..33]),
                    "y": B64URL.encode(&point[33..65]),
                })
            }
        }
    }
}

/// `n` and `e` of a PKCS#1 `RSAPublicKey` (`SEQUENCE { INTEGER n, INTEGER e }`, DER),
/// without the sign byte DER puts before a high bit.
fn rsa_components(der: &[u8]) -> (&[u8], &[u8]) {
    /// The content of the DER element at the start of `der` with `tag`, and what follows it.
    fn element(der: &[u8], tag: u8) -> (&[u8], &[u8]) {
        assert_eq!(der[0], tag);
        let (length, header) = match der[1] {
            short if short < 0x80 => (usize::from(short), 2),
            long => {
                let bytes = usize::from(long & 0x7f);
                let length = der[2..2 + bytes].iter().fold(0, |n, b| (n << 8) | usize::from(*b));
                (length, 2 + bytes)
            }
        };
        (&der[header..header + length], &der[header + length..])
    }
    let (sequence, _) = element(der, 0x30);
    let (n, rest) = element(sequence, 0x02);
    let (e, _) = element(rest, 0x02);
    let unsigned = |integer: &[u8]| -> usize { usize::from(integer.len() > 1 && integer[0] == 0) };
    (&n[unsigned(n)..], &e[unsigned(e)..])
}

// ---------------------------------------------------------------------------------------
// The cluster issuer

/// A cluster's service-account token issuer: it signs projected tokens with its key and
/// serves its OIDC discovery document and JWKS on loopback, as an API server does for
/// providers that federate with it. Stops when dropped.
pub struct ClusterIssuer {
    /// The issuer URL, the tokens' `iss`.
    pub url: String,
    key: IssuerKey,
    task: JoinHandle<()>,
}

impl ClusterIssuer {
    pub async fn start(alg: Alg) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Each issuer's key id is its own, as two clusters' are.
        let key = IssuerKey::generate(alg, &format!("cluster-{}", addr.port()));
        let url = format!("http://{addr}");
        let documents: Arc<HashMap<&'static str, String>> = Arc::new(HashMap::from([
            (
                "/.well-known/openid-configuration",
                json!({
                    "issuer": url,
                    "jwks_uri": format!("{url}/openid/v1/jwks"),
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": [if alg == Alg::RS256 { "RS256" } else { "ES256" }],
                })
                .to_string(),
            ),
            ("/openid/v1/jwks", json!({ "keys": [key.jwk()] }).to_string()),
        ]));
        let task = tokio::spawn(serve_documents(listener, documents));
        Self { url, key, task }
    }

    /// A projected service-account token for `namespace`/`name`, for `audience`, expiring at
    /// `exp`; `n` tells rotations apart (its `jti`).
    pub fn token(&self, namespace: &str, name: &str, audience: &str, exp: u64, n: u32) -> String {
        self.key.sign(&self.claims(namespace, name, audience, exp, n))
    }

    /// The claims the kubelet's token request gets from the API server.
    pub fn claims(&self, namespace: &str, name: &str, audience: &str, exp: u64, n: u32) -> Value {
        json!({
            "aud": [audience],
            "exp": exp,
            "iat": exp.saturating_sub(3600),
            "nbf": exp.saturating_sub(3600),
            "iss": self.url,
            "jti": format!("rotation-{n}"),
            "kubernetes.io": { "namespace": namespace, "serviceaccount": { "name": name, "uid": "5b8e" } },
            "sub": service_account(namespace, name),
        })
    }

    /// The `kid` of the issuer's key, for an impostor to claim.
    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// Signs `claims` with the issuer's own key.
    pub fn sign(&self, claims: &Value) -> String {
        self.key.sign(claims)
    }
}

impl Drop for ClusterIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers `GET` of each path in `documents` with its JSON, anything else 404.
async fn serve_documents(listener: TcpListener, documents: Arc<HashMap<&'static str, String>>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        let documents = Arc::clone(&documents);
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let found = documents.get(request.uri().path()).cloned();
                async move {
                    let mut response = Response::new(Full::new(Bytes::from(found.clone().unwrap_or_default())));
                    if found.is_none() {
                        *response.status_mut() = StatusCode::NOT_FOUND;
                    }
                    response
                        .headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------
// The identity provider

/// What the provider trusts: tokens of `issuer` (its keys read from its discovery
/// document) for `subject`, addressed to `audience`, on behalf of `client_id` (a federated
/// credential, as Entra and Keycloak register one on a client).
#[derive(Clone, Debug)]
pub struct Trust {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    pub client_id: String,
}

/// One verification key of the trusted issuer, from its JWKS.
enum Verifier {
    Rsa(PublicKeyComponents<Vec<u8>>),
    Ec(Vec<u8>),
}

/// An identity provider that federates with a cluster issuer. Its token endpoint is a
/// recording [`TokenServer`]; token `n` it issues is `federated-<n>`.
pub struct Idp {
    pub tokens: TokenServer,
}

impl Idp {
    /// Reads the issuer's keys the way providers do (discovery document, then `jwks_uri`)
    /// and starts the token endpoint.
    pub async fn start(trust: Trust) -> Self {
        let keys = Arc::new(fetch_keys(&trust.issuer).await);
        let tokens = TokenServer::with(Duration::ZERO, move |n, request| answer(&trust, &keys, n, request)).await;
        Self { tokens }
    }

    pub fn url(&self) -> String {
        self.tokens.url()
    }
}

/// The issuer's JWKS, by `kid`, through its discovery document.
async fn fetch_keys(issuer: &str) -> HashMap<String, Verifier> {
    let http = direct_client();
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let discovery = get(format!("{issuer}/.well-known/openid-configuration")).await;
    assert_eq!(discovery["issuer"], issuer, "the discovery document names its issuer");
    let jwks = get(discovery["jwks_uri"].as_str().unwrap().to_owned()).await;
    let decode = |key: &Value, name: &str| B64URL.decode(key[name].as_str().unwrap()).unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            let verifier = match key["kty"].as_str() {
                Some("RSA") => Verifier::Rsa(PublicKeyComponents {
                    n: decode(key, "n"),
                    e: decode(key, "e"),
                }),
                Some("EC") => Verifier::Ec([vec![4], decode(key, "x"), decode(key, "y")].concat()),
                other => panic!("unexpected key type {other:?}"),
            };
            (key["kid"].as_str().unwrap().to_owned(), verifier)
        })
        .collect()
}

/// The token request's answer: a token when its JWT is one `trust` accepts, else the
/// refusal a real provider gives for that grant.
fn answer(trust: &Trust, keys: &HashMap<String, Verifier>, n: usize, request: &Recorded) -> Reply {
    let params: HashMap<String, String> = if request.header("content-type") == Some("application/json") {
        serde_json::from_slice(&request.bytes).unwrap_or_default()
    } else {
        form_urlencoded::parse(&request.bytes).into_owned().collect()
    };
    let param = |name: &str| params.get(name).map(String::as_str);
    let issued = format!("federated-{n}");
    match param("grant_type") {
        Some("client_credentials") => {
            let client = match (
                param("client_assertion_type"),
                param("client_assertion"),
                param("client_id"),
            ) {
                (Some(CLIENT_ASSERTION_TYPE), Some(jwt), Some(id)) if id == trust.client_id => verify(trust, keys, jwt),
                (Some(CLIENT_ASSERTION_TYPE), Some(_), _) => Err(format!("client_id is not {}", trust.client_id)),
                _ => Err("no client assertion".to_owned()),
            };
            match client {
                Ok(()) => token(&issued, None),
                Err(problem) => refusal(401, "invalid_client", &problem),
            }
        }
        Some(JWT_BEARER) => match verify(trust, keys, param("assertion").unwrap_or_default()) {
            Ok(()) => token(&issued, None),
            Err(problem) => refusal(400, "invalid_grant", &problem),
        },
        Some(TOKEN_EXCHANGE) => {
            let subject = match param("subject_token_type") {
                Some(JWT_TOKEN_TYPE) => verify(trust, keys, param("subject_token").unwrap_or_default()),
                other => Err(format!("subject_token_type {other:?} is not supported")),
            };
            match (subject, param("requested_token_type").unwrap_or(ACCESS_TOKEN_TYPE)) {
                (Ok(()), ACCESS_TOKEN_TYPE) => token(&issued, Some(ACCESS_TOKEN_TYPE)),
                (Ok(()), other) => refusal(400, "invalid_target", &format!("cannot issue {other}")),
                (Err(problem), _) => refusal(400, "invalid_request", &problem),
            }
        }
        other => refusal(400, "unsupported_grant_type", &format!("{other:?}")),
    }
}

/// Checks `jwt` as federation does: a compact JWS signed by a key of the trusted issuer
/// (chosen by `kid`, with that key's algorithm), then `iss`, `sub`, `aud` and `exp`.
fn verify(trust: &Trust, keys: &HashMap<String, Verifier>, jwt: &str) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err("the assertion is not a JWS".into());
    };
    let json = |part: &str| -> Result<Value, String> {
        let bytes = B64URL.decode(part).map_err(|_| "malformed JWT".to_owned())?;
        serde_json::from_slice(&bytes).map_err(|_| "malformed JWT".to_owned())
    };
    let (header, claims) = (json(header)?, json(payload)?);
    let signature = B64URL.decode(signature).map_err(|_| "malformed signature".to_owned())?;
    let input = format!("{}.{}", parts[0], parts[1]);
    let key = header["kid"]
        .as_str()
        .and_then(|kid| keys.get(kid))
        .ok_or("no key of the trusted issuer has this kid")?;
    let verified = match (key, header["alg"].as_str()) {
        (Verifier::Rsa(key), Some("RS256")) => {
            key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &signature)
        }
        (Verifier::Ec(point), Some("ES256")) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &signature)
        }
        _ => return Err("the algorithm does not match the issuer's key".into()),
    };
    verified.map_err(|_| "signature verification failed".to_owned())?;
    if claims["iss"] != trust.issuer.as_str() {
        return Err(format!("iss {} is not trusted", claims["iss"]));
    }
    if claims["sub"] != trust.subject.as_str() {
        return Err(format!("sub {} matches no federated credential", claims["sub"]));
    }
    let audiences = match &claims["aud"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !audiences.contains(&trust.audience.as_str()) {
        return Err(format!("aud {} does not include {}", claims["aud"], trust.audience));
    }
    match claims["exp"].as_u64() {
        Some(exp) if exp > now() => Ok(()),
        Some(_) => Err("the assertion has expired".into()),
        None => Err("the assertion has no exp".into()),
    }
}

fn token(access_token: &str, issued_token_type: Option<&str>) -> Reply {
    let mut body = json!({ "access_token": access_token, "token_type": "Bearer", "expires_in": 3600 });
    if let Some(kind) = issued_token_type {
        body["issued_token_type"] = kind.into();
    }
    (200, "application/json", body.to_string())
}

fn refusal(status: u16, error: &str, description: &str) -> Reply {
    (
        status,
        "application/json",
        json!({ "error": error, "error_description": description }).to_string(),
    )
}
