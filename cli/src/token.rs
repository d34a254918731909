use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use maof::api::{AuthConfig, Authenticator};
use maof::domain::{Role, TenantId};
use maof::ports::SystemClock;
use secrecy::SecretString;

#[derive(clap::Args)]
pub struct TokenArgs {
    #[arg(long)]
    tenant: String,
    /// Comma-separated: viewer, submitter, operator, admin, platform_admin
    /// (only for an operator of the platform: it manages platform agents
    /// and every tenant's settings).
    #[arg(long, default_value = "submitter,viewer")]
    roles: String,
    #[arg(long, default_value = "dev")]
    sub: String,
    /// Lifetime, e.g. 30m, 1h; at most the maximum the API accepts
    /// (MAOF_JWT_MAX_LIFETIME, default 24h): a longer one is refused.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    maof::api::parse_duration(text).map_err(|e| anyhow::anyhow!("bad ttl: {e}"))
}

pub fn parse_roles(text: &str) -> anyhow::Result<Vec<Role>> {
    text.split(',')
        .map(|r| r.trim().parse::<Role>().map_err(anyhow::Error::msg))
        .collect()
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let secret = std::env::var("MAOF_JWT_SECRET").context(
        "MAOF_JWT_SECRET is not set: tokens are signed with it (maof dev uses the same variable)",
    )?;
    // The API's maximum lifetime: a token living longer would be refused,
    // so none is minted (MintError::TooLong says so).
    let rules = AuthConfig::from_env()?;
    let config = AuthConfig {
        max_lifetime: rules.max_lifetime,
        ..AuthConfig::hs256(SecretString::from(secret))
    };
    let auth = Authenticator::from_config(config, None, Arc::new(SystemClock))?;
    let tenant = TenantId::parse(args.tenant).context("bad --tenant")?;
    let token = auth.mint(
        &args.sub,
        &tenant,
        &parse_roles(&args.roles)?,
        parse_ttl(&args.ttl)?,
    )?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_roles_parse() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_ttl("2y").is_err());
        assert_eq!(
            parse_roles("admin, viewer").unwrap(),
            vec![Role::Admin, Role::Viewer]
        );
        assert!(parse_roles("root").is_err());
    }
}
