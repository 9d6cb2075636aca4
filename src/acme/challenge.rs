//! HTTP-01 as RFC 8555 section 8.3 defines it: what a challenge is and where it is served.

/// The path prefix of HTTP-01 challenges: `http://<identifier>/.well-known/acme-challenge/<token>`.
pub const CHALLENGE_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// One HTTP-01 challenge to serve: `GET http://<identifier>/.well-known/acme-challenge/<token>` must
/// answer `key_authorization`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http01Challenge {
    /// The DNS name or IP address being validated.
    pub identifier: String,
    pub token: String,
    pub key_authorization: String,
    /// The authorization URL (unique per challenge of an order).
    pub authorization_url: String,
}
