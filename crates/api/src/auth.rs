//! Secrets on requests: the runner's `AUTH_TOKEN` and the gateway's client API keys as
//! bearer tokens, and the Live Runner secrets, which go-livepeer sends as the whole
//! `Authorization` value.

use axum::http::{header, HeaderMap};
use subtle::{Choice, ConstantTimeEq};

/// True when `headers` carry `Authorization: Bearer <t>` with `t` one of `accepted`. Every
/// key is compared, in constant time, so that response times tell nothing about which key
/// or how much of it a guess got right. The scheme is case-insensitive (RFC 7235).
pub fn bearer_accepted<K: AsRef<[u8]>>(headers: &HeaderMap, accepted: &[K]) -> bool {
    let Some(token) = bearer_token(headers) else {
        return false;
    };
    accepted
        .iter()
        .fold(Choice::from(0), |found, key| {
            found | token.as_bytes().ct_eq(key.as_ref())
        })
        .into()
}

/// The token of `Authorization: Bearer <token>`, if the headers carry one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
}

/// Whether `given` is `expected`, compared in constant time (go-livepeer's `hmac.Equal`).
pub fn secret_matches(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn any_listed_key_is_accepted_and_nothing_else() {
        let keys = vec!["first".to_owned(), "second".to_owned()];
        assert!(bearer_accepted(&auth("Bearer first"), &keys));
        assert!(bearer_accepted(&auth("bearer second"), &keys));
        assert!(!bearer_accepted(&auth("Bearer secon"), &keys));
        assert!(!bearer_accepted(&auth("Bearer first "), &keys));
        assert!(!bearer_accepted(&auth("Basic first"), &keys));
        assert!(!bearer_accepted(&auth("first"), &keys));
        assert!(!bearer_accepted(&HeaderMap::new(), &keys));
        assert!(!bearer_accepted(&auth("Bearer first"), &[] as &[String]));
        assert!(bearer_accepted(&auth("Bearer s3cret"), &["s3cret"]));
    }
}
