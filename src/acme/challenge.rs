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

/// The shortest token kacme accepts: 128 bits in base64url (RFC 8555 section 8.1 asks a CA for at least
/// 128 bits of entropy; step-ca, Pebble and Boulder send 32 to 43 characters).
pub const MIN_TOKEN_LENGTH: usize = 22;
/// The longest token kacme accepts: far more than any CA sends, small enough for a path and a Pod argument.
pub const MAX_TOKEN_LENGTH: usize = 256;

/// Checks a token a CA sent before it becomes the path of a solver route and an argument of a solver Pod:
/// base64url characters only (`A-Z a-z 0-9 - _`, no padding: RFC 8555 section 8.1), from
/// [`MIN_TOKEN_LENGTH`] to [`MAX_TOKEN_LENGTH`] characters. A token with a `/`, `.`, `?`, `%` or space would
/// route something other than the challenge path; the message quotes a bounded, escaped part of it.
pub fn check_token(token: &str) -> Result<(), String> {
    let shown = crate::api::validation::quoted(token);
    if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("the CA sent a challenge token {shown} with characters outside base64url; refusing it"));
    }
    if !(MIN_TOKEN_LENGTH..=MAX_TOKEN_LENGTH).contains(&token.len()) {
        return Err(format!(
            "the CA sent a challenge token of {} characters (kacme accepts {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH}); \
             refusing it",
            token.len()
        ));
    }
    Ok(())
}

/// Checks the identifier of an authorization a CA sent before it becomes the host of a solver route:
/// one of `ordered` (the identifiers kacme ordered, which come from a validated Certificate), and a DNS
/// name or IP address as a Certificate accepts it. A CA must not make kacme route another name to a solver.
pub fn check_identifier(identifier: &str, ordered: &[String]) -> Result<(), String> {
    if !ordered.iter().any(|o| o == identifier) {
        let shown = crate::api::validation::quoted(identifier);
        return Err(format!("the CA sent an authorization for {shown}, which kacme did not order; refusing it"));
    }
    check_identifier_form(identifier)
}

/// Checks that an identifier is a DNS name or an IP address as a Certificate accepts it.
fn check_identifier_form(identifier: &str) -> Result<(), String> {
    let is_ip = crate::api::validation::ip_address(identifier).is_ok();
    if !is_ip && let Err(problem) = crate::api::validation::dns_name(identifier) {
        return Err(format!("the CA sent an authorization for an unusable identifier: {problem}"));
    }
    Ok(())
}

/// Checks a challenge before solver objects are built for it (the last line of defence, after the order
/// checked what the CA sent): [`check_token`], and an identifier that is a DNS name or IP address as a
/// Certificate accepts it.
pub fn check_challenge(challenge: &Http01Challenge) -> Result<(), String> {
    check_token(&challenge.token)?;
    check_identifier_form(&challenge.identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEBBLE_TOKEN: &str = "Xq3wTj9vS0l4mZ_kPcR8yA2dN7fUeB1hGiK5oLpQ6rs";

    #[test]
    fn only_base64url_tokens_of_sane_length_become_paths() {
        let long = "a".repeat(MAX_TOKEN_LENGTH + 1);
        let longest = "a".repeat(MAX_TOKEN_LENGTH);
        // (case, token, accepted)
        let cases = [
            ("a Pebble token", PEBBLE_TOKEN, true),
            ("a step-ca token (32 alphanumerics)", "abcdefghijklmnopqrstuvwxyzABCDEF", true),
            ("a token starting with a hyphen", "-bcdefghijklmnopqrstuvwxyzABCDEF", true),
            ("the longest token", longest.as_str(), true),
            ("an empty token", "", false),
            ("a token of 21 characters", "abcdefghijklmnopqrstu", false),
            ("a token one too long", long.as_str(), false),
            ("a token with a slash", "abcdefghijklmnopqrstuvwxyz/../../healthz", false),
            ("a token with dots", "abcdefghijklmnopqrstuvwxyz..ABCDEF", false),
            ("a token with a query", "abcdefghijklmnopqrstuvwxyz?x=ABCDEF", false),
            ("a token with percent-encoding", "abcdefghijklmnopqrstuvwxyz%2fABCDEF", false),
            ("a token with a space", "abcdefghijklmnopqrstuvwxyz ABCDEF", false),
            ("a token with a newline", "abcdefghijklmnopqrstuvwxyz\nABCDEF", false),
            ("a token with padding", "abcdefghijklmnopqrstuvwxyzABCDE=", false),
            ("a token with a plus (base64, not base64url)", "abcdefghijklmnopqrstuvwxyz+ABCDEF", false),
            ("a token with non-ASCII letters", "abcdefghijklmnopqrstuvwxyzÄBCDEF", false),
        ];
        for (case, token, accepted) in cases {
            let result = check_token(token);
            assert_eq!(result.is_ok(), accepted, "{case}: {result:?}");
            if let Err(message) = result {
                assert!(message.len() < 300, "{case}: a bounded message: {message}");
                assert!(!message.contains('\n'), "{case}: no raw control characters: {message}");
            }
        }
    }

    #[test]
    fn only_ordered_well_formed_identifiers_become_hosts() {
        let ordered: Vec<String> =
            ["web.example.test", "10.0.0.1", "fd00::1", "Web.Example.Test", "a/b.example.test", "*.example.test"]
                .map(String::from)
                .to_vec();
        // (case, identifier, accepted)
        let cases = [
            ("an ordered DNS name", "web.example.test", true),
            ("an ordered IPv4 address", "10.0.0.1", true),
            ("an ordered IPv6 address", "fd00::1", true),
            ("a name that was not ordered", "other.example.test", false),
            ("a parent of an ordered name", "example.test", false),
            ("an ordered name in upper case", "Web.Example.Test", false),
            ("an ordered name with a slash", "a/b.example.test", false),
            ("a wildcard", "*.example.test", false),
            ("an empty identifier", "", false),
        ];
        for (case, identifier, accepted) in cases {
            let result = check_identifier(identifier, &ordered);
            assert_eq!(result.is_ok(), accepted, "{case}: {result:?}");
        }
    }

    #[test]
    fn a_challenge_is_checked_for_token_and_identifier() {
        let challenge = |identifier: &str, token: &str| Http01Challenge {
            identifier: identifier.into(),
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
            authorization_url: "https://ca.example.test/authz/1".into(),
        };
        // (case, identifier, token, accepted)
        let cases = [
            ("a DNS name and a good token", "web.example.test", PEBBLE_TOKEN, true),
            ("an IP address and a good token", "10.0.0.1", PEBBLE_TOKEN, true),
            ("a path in the token", "web.example.test", "../../../../../../../../../../x", false),
            ("a host with a path", "web.example.test/x", PEBBLE_TOKEN, false),
            ("a host with a port", "web.example.test:80", PEBBLE_TOKEN, false),
        ];
        for (case, identifier, token, accepted) in cases {
            assert_eq!(check_challenge(&challenge(identifier, token)).is_ok(), accepted, "{case}");
        }
    }
}
