//! JWS as ACME uses it (RFC 8555 section 6.2): the flattened JSON serialization, ES256 account
//! signatures, HS256 external account bindings, and RFC 7638 key thumbprints.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// A parsed (not yet verified) flattened JWS.
#[derive(Debug)]
pub(super) struct Jws {
    pub(super) protected: Protected,
    /// The decoded payload; `None` for an empty payload (a POST-as-GET).
    pub(super) payload: Option<Value>,
    /// What the signature covers: `protected "." payload`, both base64url as sent.
    signing_input: String,
    signature: Vec<u8>,
}

/// The protected header of a request.
#[derive(Debug)]
pub(super) struct Protected {
    pub(super) alg: String,
    pub(super) nonce: Option<String>,
    pub(super) url: String,
    /// The account key, on newAccount requests.
    pub(super) jwk: Option<Value>,
    /// The account URL, on every other request.
    pub(super) kid: Option<String>,
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| format!("the {what} is not base64url"))
}

fn text_field(object: &Value, name: &str) -> Option<String> {
    object.get(name).and_then(Value::as_str).map(str::to_string)
}

impl Jws {
    /// Parses a request body: `{"protected": b64, "payload": b64, "signature": b64}`.
    pub(super) fn parse(body: &[u8]) -> Result<Jws, String> {
        let outer: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not a JWS: {e}"))?;
        let part = |name: &str| {
            outer.get(name).and_then(Value::as_str).ok_or_else(|| format!("the JWS has no {name:?} string"))
        };
        let (protected_b64, payload_b64, signature_b64) = (part("protected")?, part("payload")?, part("signature")?);
        let header: Value = serde_json::from_slice(&decode(protected_b64, "protected header")?)
            .map_err(|e| format!("the protected header is not JSON: {e}"))?;
        let protected = Protected {
            alg: text_field(&header, "alg").ok_or("the protected header has no alg")?,
            nonce: text_field(&header, "nonce"),
            url: text_field(&header, "url").ok_or("the protected header has no url")?,
            jwk: header.get("jwk").cloned(),
            kid: text_field(&header, "kid"),
        };
        if protected.jwk.is_some() == protected.kid.is_some() {
            return Err("the protected header must have exactly one of jwk and kid".into());
        }
        let payload = match payload_b64 {
            "" => None,
            encoded => Some(
                serde_json::from_slice(&decode(encoded, "payload")?)
                    .map_err(|e| format!("the payload is not JSON: {e}"))?,
            ),
        };
        Ok(Jws {
            protected,
            payload,
            signing_input: format!("{protected_b64}.{payload_b64}"),
            signature: decode(signature_b64, "signature")?,
        })
    }

    /// Checks the signature with the account key `jwk` (ES256 only: the one algorithm instant-acme uses).
    pub(super) fn verify(&self, jwk: &Value) -> Result<(), String> {
        if self.protected.alg != "ES256" {
            return Err(format!("unsupported signature algorithm {:?}", self.protected.alg));
        }
        let point = p256_point(jwk)?;
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| "JWS signature verification failed".to_string())
    }

    /// Checks an external account binding's HS256 MAC with the CA's HMAC key.
    pub(super) fn verify_hmac(&self, hmac_key: &[u8]) -> Result<(), String> {
        if self.protected.alg != "HS256" {
            return Err(format!("unsupported EAB algorithm {:?}", self.protected.alg));
        }
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, hmac_key);
        aws_lc_rs::hmac::verify(&key, self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| "the external account binding's MAC does not verify".to_string())
    }
}

/// The uncompressed SEC1 point of a P-256 JWK.
fn p256_point(jwk: &Value) -> Result<Vec<u8>, String> {
    if text_field(jwk, "kty").as_deref() != Some("EC") || text_field(jwk, "crv").as_deref() != Some("P-256") {
        return Err("only P-256 EC account keys are supported".into());
    }
    let coordinate = |name: &str| {
        let text = text_field(jwk, name).ok_or_else(|| format!("the JWK has no {name}"))?;
        let bytes = decode(&text, "JWK coordinate")?;
        match bytes.len() {
            32 => Ok(bytes),
            n => Err(format!("the JWK's {name} has {n} bytes, not 32")),
        }
    };
    let mut point = vec![0x04];
    point.extend(coordinate("x")?);
    point.extend(coordinate("y")?);
    Ok(point)
}

/// The RFC 7638 thumbprint of an EC JWK, base64url: what a key authorization ends with.
pub(super) fn thumbprint(jwk: &Value) -> Result<String, String> {
    p256_point(jwk)?;
    // The required members in lexicographic order, no whitespace (RFC 7638 section 3); written out by
    // hand so that no serde_json feature (preserve_order) can change the order.
    let member = |name: &str| Value::from(text_field(jwk, name).unwrap_or_default()).to_string();
    let canonical =
        format!(r#"{{"crv":{},"kty":{},"x":{},"y":{}}}"#, member("crv"), member("kty"), member("x"), member("y"));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

/// A random base64url string of `bytes` random bytes (tokens, nonces).
pub(super) fn random_b64(bytes: usize) -> String {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut buffer = vec![0u8; bytes];
    // The system random source does not fail on Linux; a zero buffer would still be a usable test token.
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}
