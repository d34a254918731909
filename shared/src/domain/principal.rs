//! Who is acting: the claims of a validated token, already parsed.

use serde::{Deserialize, Serialize};

use super::ids::TenantId;

/// Roles nest: an admin may do what an operator may, an operator what a
/// submitter may, a submitter what a viewer may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Submitter,
    Operator,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "submitter" => Ok(Role::Submitter),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}`")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub sub: String,
    pub tenant: TenantId,
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether any of the principal's roles is at least `needed`.
    pub fn may(&self, needed: Role) -> bool {
        self.roles.iter().any(|r| *r >= needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest() {
        let p = Principal {
            sub: "u".into(),
            tenant: TenantId::parse("t").unwrap(),
            roles: vec![Role::Submitter],
        };
        assert!(p.may(Role::Viewer));
        assert!(p.may(Role::Submitter));
        assert!(!p.may(Role::Admin));
    }
}
