//! Who is acting: the claims of a validated token, already parsed.

use serde::{Deserialize, Serialize};

use super::ids::TenantId;

/// Roles nest: a platform admin may do what an admin may, an admin what an
/// operator may, an operator what a submitter may, a submitter what a
/// viewer may. Only `platform_admin` reaches past its own tenant (platform
/// agents, tenants' settings); no tenant token carries it unless minted so.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Submitter,
    Operator,
    Admin,
    PlatformAdmin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Submitter,
        Role::Operator,
        Role::Admin,
        Role::PlatformAdmin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::PlatformAdmin => "platform_admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role `{s}`"))
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
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.name());
        }
        let platform = Principal {
            roles: vec![Role::PlatformAdmin],
            ..p
        };
        assert!(platform.may(Role::Admin));
    }
}
