//! Which database users a person may use. Three ways, any of which may allow a login:
//!
//! - `user_claim`: a claim (e.g. `preferred_username`) whose value must equal the
//!   requested database user, as the seeds' IAM rule "database user = IdP user name";
//! - `users`: an explicit table from a person (their `sub` or `email`) to database users;
//! - `groups`: IdP groups to database users (`dba = ["postgres"]`).
//!
//! With none configured nobody may log in: the proxy refuses to start.

use std::collections::HashMap;

use serde::Deserialize;

use crate::{Claims, Identity};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserMapping {
    /// A claim whose value must equal the database user.
    #[serde(default)]
    pub user_claim: Option<String>,
    /// Person (sub or email) -> database users they may use.
    #[serde(default)]
    pub users: HashMap<String, Vec<String>>,
    /// IdP group -> database users its members may use.
    #[serde(default)]
    pub groups: HashMap<String, Vec<String>>,
}

impl UserMapping {
    pub fn is_empty(&self) -> bool {
        self.user_claim.is_none() && self.users.is_empty() && self.groups.is_empty()
    }

    pub fn permits(&self, claims: &Claims, identity: &Identity, db_user: &str) -> bool {
        let names = |list: Option<&Vec<String>>| list.is_some_and(|l| l.iter().any(|u| u == db_user));
        if let Some(claim) = &self.user_claim
            && claims.get(claim).and_then(serde_json::Value::as_str) == Some(db_user)
        {
            return true;
        }
        if names(self.users.get(&identity.subject)) || identity.email.as_ref().is_some_and(|e| names(self.users.get(e)))
        {
            return true;
        }
        identity.groups.iter().any(|g| names(self.groups.get(g)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(sub: &str, email: &str, groups: &[&str]) -> (Claims, Identity) {
        let claims: Claims =
            serde_json::from_value(serde_json::json!({"sub": sub, "preferred_username": sub, "email": email}))
                .expect("claims");
        let identity = Identity {
            issuer: "https://idp".into(),
            subject: sub.into(),
            name: None,
            email: Some(email.into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            token_id: None,
            auth_method: "oidc".into(),
        };
        (claims, identity)
    }

    #[test]
    fn each_way_allows_only_what_it_names() {
        let mapping: UserMapping = toml_like(
            r#"{"user_claim": "preferred_username",
                "users": {"bob@example.com": ["reporting"]},
                "groups": {"dba": ["postgres"]}}"#,
        );
        let (claims, alice) = person("alice", "alice@example.com", &["dba"]);
        assert!(mapping.permits(&claims, &alice, "alice"));
        assert!(mapping.permits(&claims, &alice, "postgres"));
        assert!(!mapping.permits(&claims, &alice, "reporting"));
        let (claims, bob) = person("bob", "bob@example.com", &["analysts"]);
        assert!(mapping.permits(&claims, &bob, "reporting"));
        assert!(mapping.permits(&claims, &bob, "bob"));
        assert!(!mapping.permits(&claims, &bob, "alice"));
        assert!(!mapping.permits(&claims, &bob, "postgres"));
    }

    #[test]
    fn without_a_user_claim_the_name_alone_is_not_enough() {
        let mapping: UserMapping = toml_like(r#"{"groups": {"dba": ["postgres"]}}"#);
        let (claims, alice) = person("alice", "alice@example.com", &[]);
        assert!(!mapping.permits(&claims, &alice, "alice"));
    }

    fn toml_like(json: &str) -> UserMapping {
        serde_json::from_str(json).expect("mapping")
    }
}
