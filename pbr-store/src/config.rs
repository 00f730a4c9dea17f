//! Where the store's server is and who we are to it, found the way other
//! S3 clients find it: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`), then the profile
//! (`AWS_PROFILE`, else `default`) of the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`: its
//! `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
//! `region`, `endpoint_url`). The secret never appears in a message or a
//! `Debug` print.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// How to reach a store's server.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The server's URL (`http://127.0.0.1:8333`); `None`: AWS itself.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The access key id.
    pub access_key: String,
    secret: String,
    token: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret", &"(hidden)")
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

impl Config {
    /// A configuration from its parts.
    pub fn new(endpoint: Option<String>, region: &str, access_key: &str, secret: &str) -> Config {
        Config { endpoint, region: region.into(), access_key: access_key.into(), secret: secret.into(), token: None }
    }

    /// The secret key.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The session token, if any.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The configuration from the environment, then the profile file.
    ///
    /// # Errors
    /// No access key or secret anywhere, or a profile file that cannot be
    /// read.
    pub fn from_env() -> Result<Config> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let profile_name = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
        let profile = match &file {
            Some(f) if f.exists() => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| Error::Credentials(format!("cannot read {}: {e}", f.display())))?;
                profile(&text, &profile_name)
            }
            _ => HashMap::new(),
        };
        let get = |var: &str, key: &str| env(var).or_else(|| profile.get(key).cloned());
        let (Some(access_key), Some(secret)) =
            (get("AWS_ACCESS_KEY_ID", "aws_access_key_id"), get("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"))
        else {
            return Err(Error::Credentials(format!(
                "no credentials for the store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile \
                 [{profile_name}] in {}",
                file.map_or_else(|| "~/.aws/credentials".into(), |f| f.display().to_string())
            )));
        };
        Ok(Config {
            endpoint: env("AWS_ENDPOINT_URL_S3").or_else(|| get("AWS_ENDPOINT_URL", "endpoint_url")),
            region: env("AWS_REGION")
                .or_else(|| get("AWS_DEFAULT_REGION", "region"))
                .unwrap_or_else(|| "us-east-1".into()),
            access_key,
            secret,
            token: get("AWS_SESSION_TOKEN", "aws_session_token"),
        })
    }
}

/// The keys of section `[name]` of an INI text.
fn profile(text: &str, name: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            inside = section == name || section.strip_prefix("profile ").map(str::trim) == Some(name);
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_read_and_the_secret_never_printed() {
        let text = "[default]\naws_access_key_id = A\n\n[profile fleet]\naws_access_key_id=B\n\
                    aws_secret_access_key = S3CR3T\nendpoint_url = http://127.0.0.1:8333\n";
        let p = profile(text, "fleet");
        assert_eq!(p["aws_access_key_id"], "B");
        assert_eq!(p["endpoint_url"], "http://127.0.0.1:8333");
        assert_eq!(profile(text, "default")["aws_access_key_id"], "A");
        assert!(profile(text, "none").is_empty());
        let c = Config::new(None, "us-east-1", "B", "S3CR3T");
        assert!(!format!("{c:?}").contains("S3CR3T"));
    }
}
