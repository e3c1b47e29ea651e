//! Webhook signatures (SPEC §4 `webhook`), checked over the raw body in
//! constant time. The HTTP side is in `api::hooks`.
//!
//! - `hmac-sha256`: `X-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
//! - `github`: `X-Hub-Signature-256: sha256=<hex>`, same construction.
//! - `standard-webhooks`: `webhook-id`, `webhook-timestamp` (Unix seconds,
//!   within [`TOLERANCE`] of now) and `webhook-signature`, a space-separated
//!   list of `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`; any
//!   one matching is enough (key rotation). A `whsec_` secret is the base64
//!   key; any other secret is used as raw bytes.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::spec::binding::SignatureScheme;

/// How far a signed timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

/// Why a request was refused (401); the message names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// Checks `body` against the scheme's headers. `header` looks a header up by
/// lowercase name. `now` is Unix seconds.
pub fn verify(
    scheme: SignatureScheme,
    secret: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    match scheme {
        SignatureScheme::HmacSha256 => verify_hex(secret, "x-signature-256", header, body),
        SignatureScheme::Github => verify_hex(secret, "x-hub-signature-256", header, body),
        SignatureScheme::StandardWebhooks => verify_standard(secret, header, body, now),
    }
}

fn verify_hex(
    secret: &str,
    name: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<(), Refused> {
    let value = header(name).ok_or_else(|| Refused(format!("missing {name} header")))?;
    let hex_sig = value
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| Refused(format!("{name} must be `sha256=<hex>`")))?;
    let signature =
        hex::decode(hex_sig).map_err(|_| Refused(format!("{name} is not valid hex")))?;
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    // `verify_slice` compares in constant time and refuses a wrong length
    // (a truncated signature) without a shortcut on the prefix.
    mac.verify_slice(&signature)
        .map_err(|_| Refused(format!("{name} does not match the body")))
}

fn verify_standard(
    secret: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    let id = header("webhook-id").ok_or_else(|| Refused("missing webhook-id header".into()))?;
    let timestamp = header("webhook-timestamp")
        .ok_or_else(|| Refused("missing webhook-timestamp header".into()))?;
    let signatures = header("webhook-signature")
        .ok_or_else(|| Refused("missing webhook-signature header".into()))?;
    let key = standard_key(secret).map_err(Refused)?;
    let mut base = mac(&key);
    base.update(id.as_bytes());
    base.update(b".");
    base.update(timestamp.as_bytes());
    base.update(b".");
    base.update(body);
    let mut matched = false;
    for candidate in signatures.split_whitespace() {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        // Every candidate is checked (no early exit), each in constant time.
        matched |= base.clone().verify_slice(&signature).is_ok();
    }
    if !matched {
        return Err(Refused("webhook-signature does not match the body".into()));
    }
    // The timestamp is checked only once it is known to be authentic.
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refused("webhook-timestamp is not Unix seconds".into()))?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(Refused(format!(
            "webhook-timestamp is {}s from now (tolerance {TOLERANCE_SECS}s): a stale or replayed delivery",
            now - ts
        )));
    }
    Ok(())
}

pub use crate::spec::binding::standard_webhooks_key as standard_key;

/// Signs like a sender would (tests, benchmarks, and `hmac-sha256` clients).
pub fn sign_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A standard-webhooks `v1,<base64>` signature.
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default(),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = mac(&key);
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn hmac_schemes() {
        let body = br#"{"a":1}"#;
        let sig = sign_hex("s3cret", body);
        let ok = headers(&[("x-signature-256", sig.clone())]);
        assert!(verify(SignatureScheme::HmacSha256, "s3cret", &ok, body, 0).is_ok());
        assert!(verify(SignatureScheme::HmacSha256, "other", &ok, body, 0).is_err());
        assert!(verify(SignatureScheme::HmacSha256, "s3cret", &ok, b"{}", 0).is_err());
        let truncated = headers(&[("x-signature-256", sig[..sig.len() - 2].to_string())]);
        assert!(verify(SignatureScheme::HmacSha256, "s3cret", &truncated, body, 0).is_err());
        let missing = headers(&[]);
        let e = verify(SignatureScheme::HmacSha256, "s3cret", &missing, body, 0).unwrap_err();
        assert!(e.0.contains("missing x-signature-256"), "{e}");
        let gh = headers(&[("x-hub-signature-256", sig)]);
        assert!(verify(SignatureScheme::Github, "s3cret", &gh, body, 0).is_ok());
    }

    #[test]
    fn standard_webhooks() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let now = 1_614_265_330;
        let good = sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", now, body);
        // The published example of the standard.
        assert_eq!(good, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let h = |sig: String, ts: i64| {
            headers(&[
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ])
        };
        assert!(
            verify(
                SignatureScheme::StandardWebhooks,
                secret,
                &h(good.clone(), now),
                body,
                now
            )
            .is_ok()
        );
        // Key rotation: several signatures, one good.
        let rotated = format!("v1,AAAA {good}");
        assert!(
            verify(
                SignatureScheme::StandardWebhooks,
                secret,
                &h(rotated, now),
                body,
                now
            )
            .is_ok()
        );
        // Stale timestamp.
        let e = verify(
            SignatureScheme::StandardWebhooks,
            secret,
            &h(good.clone(), now),
            body,
            now + 600,
        )
        .unwrap_err();
        assert!(e.0.contains("stale"), "{e}");
        // Tampered body.
        assert!(
            verify(
                SignatureScheme::StandardWebhooks,
                secret,
                &h(good, now),
                b"{}",
                now
            )
            .is_err()
        );
    }
}
