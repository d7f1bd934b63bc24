//! Per-route authorization: `roles_any`, `scopes_all`, `claims`.

use serde_json::Value;

use super::VerifiedClaims;

/// What a route requires of a verified caller.
#[derive(Debug, Default)]
pub struct AccessRule {
    roles_any: Box<[String]>,
    scopes_all: Box<[String]>,
    claims: Box<[(String, Value)]>,
}

/// The caller lacks a role, scope or claim (403 `insufficient_scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied(pub &'static str);

impl AccessRule {
    pub fn new(
        roles_any: Vec<String>,
        scopes_all: Vec<String>,
        claims: Vec<(String, Value)>,
    ) -> Self {
        AccessRule {
            roles_any: roles_any.into(),
            scopes_all: scopes_all.into(),
            claims: claims.into(),
        }
    }

    /// # Errors
    /// [`Denied`] naming what is missing.
    pub fn check(&self, c: &VerifiedClaims) -> Result<(), Denied> {
        if !self.roles_any.is_empty()
            && !c
                .roles()
                .iter()
                .any(|r| self.roles_any.iter().any(|want| **r == **want))
        {
            return Err(Denied("a required role is missing"));
        }
        if !self
            .scopes_all
            .iter()
            .all(|want| c.scopes().iter().any(|s| **s == **want))
        {
            return Err(Denied("a required scope is missing"));
        }
        for (name, want) in &*self.claims {
            if !claim_matches(c.claim(name), want) {
                return Err(Denied("a required claim is missing or differs"));
            }
        }
        Ok(())
    }
}

/// Equal values match; a scalar also matches an array that contains it
/// (`groups = "admins"` against `"groups": ["admins", "dev"]`).
fn claim_matches(have: Option<&Value>, want: &Value) -> bool {
    match have {
        None => false,
        Some(v) if v == want => true,
        Some(Value::Array(items)) if !want.is_array() => items.contains(want),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalar_claims_match_inside_arrays() {
        assert!(claim_matches(Some(&json!(["a", "b"])), &json!("b")));
        assert!(claim_matches(Some(&json!("acme")), &json!("acme")));
        assert!(!claim_matches(Some(&json!("acme2")), &json!("acme")));
        assert!(!claim_matches(None, &json!("acme")));
        assert!(!claim_matches(Some(&json!(1)), &json!("1")));
    }
}
