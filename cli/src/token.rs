use std::time::Duration;

use anyhow::{Context, bail};
use maof::api::Authenticator;
use maof::domain::{Role, TenantId};
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
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("bad ttl `{text}`"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("bad ttl unit in `{text}`: use s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
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
    let auth = Authenticator::new(SecretString::from(secret));
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
