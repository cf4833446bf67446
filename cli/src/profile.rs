//! `profile save|select|list|show|delete`: named client settings, as Bacalhau v1.9 keeps them —
//! one YAML file per profile in `<data-dir>/profiles/<name>.yaml` (`endpoint`, `description`,
//! `timeout`, `auth.token`, `tls.insecure`), and a `current` symlink naming the selected one.
//!
//! A client uses `--profile NAME` (or `CARAVEL_PROFILE`/`BACALHAU_PROFILE`), else the selected
//! profile, for whatever `--api-host`/`--api-port` and the credential variables do not give. Files
//! are written mode 0600: a profile may hold a token. A token is read from a file or stdin, never
//! from the command line (where `ps` would show it), and `show` prints it only with `--show-token`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::Global;
use crate::output::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Create or update a profile.
    Save {
        name: String,
        /// The API: http(s)://host:port.
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Request timeout, a Go duration (30s, 2m).
        #[arg(long)]
        timeout: Option<String>,
        /// Do not verify the API's certificate.
        #[arg(long)]
        insecure: bool,
        /// A file holding the API key sent as `Authorization: Bearer` (`-` reads stdin).
        #[arg(long, value_name = "FILE")]
        auth_token_file: Option<String>,
        /// Select it too.
        #[arg(long)]
        select: bool,
    },
    /// Make a profile the one clients use.
    Select { name: String },
    /// Every profile; the selected one is marked.
    List(OutputArgs),
    /// One profile (the selected one by default).
    Show {
        name: Option<String>,
        /// Print the auth token too.
        #[arg(long)]
        show_token: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Remove a profile.
    Delete {
        name: String,
        /// Delete it even if it is selected.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

/// One profile, as Bacalhau writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub endpoint: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub timeout: String,
    #[serde(skip_serializing_if = "Auth::is_empty")]
    pub auth: Auth,
    #[serde(skip_serializing_if = "Tls::is_default")]
    pub tls: Tls,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Auth {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl Auth {
    fn is_empty(&self) -> bool {
        self.token.is_empty()
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.token.is_empty() {
            "no token"
        } else {
            "a token"
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    pub insecure: bool,
}

impl Tls {
    fn is_default(&self) -> bool {
        !self.insecure
    }
}

fn dir(g: &Global) -> PathBuf {
    let data = g
        .data_dir
        .clone()
        .unwrap_or_else(caravel_model::config::default_data_dir);
    Path::new(&data).join("profiles")
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name == "current"
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        bail!(
            "profile name {name:?} is not valid: use up to 64 letters, digits, '-', '_' or '.' (not `current`)"
        );
    }
    Ok(())
}

fn path_of(g: &Global, name: &str) -> PathBuf {
    dir(g).join(format!("{name}.yaml"))
}

/// The selected profile's name, if any.
pub fn selected(g: &Global) -> Option<String> {
    let link = std::fs::read_link(dir(g).join("current")).ok()?;
    let file = link.file_name()?.to_str()?;
    Some(file.strip_suffix(".yaml").unwrap_or(file).to_string())
}

/// Reads a profile by name.
pub fn load(g: &Global, name: &str) -> anyhow::Result<Profile> {
    check_name(name)?;
    let p = path_of(g, name);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "no profile {name:?} ({}); create it with `caravel profile save {name} --endpoint URL`",
            p.display()
        )
    })?;
    serde_norway::from_str(&text)
        .with_context(|| format!("profile file {} is not valid", p.display()))
}

/// The profile a client command uses: `--profile`/`CARAVEL_PROFILE`/`BACALHAU_PROFILE`, else the
/// selected one, else none.
pub fn active(g: &Global) -> anyhow::Result<Option<Profile>> {
    let named = g.profile.clone().or_else(|| {
        std::env::var("BACALHAU_PROFILE")
            .ok()
            .filter(|v| !v.is_empty())
    });
    match named {
        Some(n) => load(g, &n).map(Some),
        None => match selected(g) {
            Some(n) => load(g, &n).map(Some),
            None => Ok(None),
        },
    }
}

fn write(g: &Global, name: &str, p: &Profile) -> anyhow::Result<()> {
    let d = dir(g);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let path = path_of(g, name);
    let tmp = d.join(format!(".{name}.yaml.tmp"));
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_norway::to_string(p)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn select(g: &Global, name: &str) -> anyhow::Result<()> {
    let link = dir(g).join("current");
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    std::os::unix::fs::symlink(format!("{name}.yaml"), &link)
        .with_context(|| format!("writing {}", link.display()))?;
    Ok(())
}

fn read_secret(source: &str) -> anyhow::Result<String> {
    let text = if source == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(source).with_context(|| format!("cannot read {source}"))?
    };
    let t = text.trim().to_string();
    if t.is_empty() {
        bail!("the auth token file {source} is empty");
    }
    Ok(t)
}

pub fn run(g: &Global, cmd: ProfileCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ProfileCommand::Save {
            name,
            endpoint,
            description,
            timeout,
            insecure,
            auth_token_file,
            select: sel,
        } => {
            check_name(&name)?;
            let mut p = load(g, &name).unwrap_or_default();
            if let Some(e) = endpoint {
                let u = url::Url::parse(&e)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .with_context(|| format!("--endpoint {e:?}: give http(s)://host:port"))?;
                p.endpoint = u.as_str().trim_end_matches('/').to_string();
            }
            if p.endpoint.is_empty() {
                bail!("profile {name:?} needs an endpoint: --endpoint http(s)://host:port");
            }
            if let Some(d) = description {
                p.description = d;
            }
            if let Some(t) = timeout {
                crate::job::go_secs(&t).map_err(|e| anyhow::anyhow!("--timeout {t}: {e}"))?;
                p.timeout = t;
            }
            if insecure {
                p.tls.insecure = true;
            }
            if let Some(f) = auth_token_file {
                p.auth.token = read_secret(&f)?;
            }
            write(g, &name, &p)?;
            if sel || selected(g).is_none() {
                select(g, &name)?;
            }
            eprintln!("Profile {name:?} saved.");
        }
        ProfileCommand::Select { name } => {
            load(g, &name)?;
            select(g, &name)?;
            eprintln!("Profile {name:?} selected.");
        }
        ProfileCommand::List(out) => {
            let current = selected(g);
            let mut rows = Vec::new();
            let mut items = Vec::new();
            if let Ok(entries) = std::fs::read_dir(dir(g)) {
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter_map(|f| f.strip_suffix(".yaml").map(String::from))
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                names.sort();
                for n in names {
                    let Ok(p) = load(g, &n) else { continue };
                    let mark = if current.as_deref() == Some(n.as_str()) {
                        "*"
                    } else {
                        ""
                    };
                    rows.push(vec![
                        mark.to_string(),
                        n.clone(),
                        p.endpoint.clone(),
                        p.description.clone(),
                    ]);
                    items.push(serde_json::json!({
                        "Name": n, "Current": !mark.is_empty(), "Endpoint": p.endpoint,
                        "Description": p.description,
                    }));
                }
            }
            if !out.structured(&items)? {
                print!(
                    "{}",
                    out.table(&["current", "name", "endpoint", "description"], &rows)
                );
            }
        }
        ProfileCommand::Show {
            name,
            show_token,
            out,
        } => {
            let name = match name.or_else(|| selected(g)) {
                Some(n) => n,
                None => bail!("no profile is selected; name one, or `caravel profile select NAME`"),
            };
            let mut p = load(g, &name)?;
            if !show_token && !p.auth.token.is_empty() {
                p.auth.token = "<hidden: --show-token prints it>".into();
            }
            let mut out = out;
            if out.output == crate::output::Format::Table {
                out.output = crate::output::Format::Yaml;
            }
            out.structured(&p)?;
        }
        ProfileCommand::Delete { name, force } => {
            check_name(&name)?;
            let path = path_of(g, &name);
            if !path.exists() {
                bail!("no profile {name:?}");
            }
            let is_current = selected(g).as_deref() == Some(name.as_str());
            if is_current && !force {
                bail!(
                    "profile {name:?} is selected; select another first, or delete it with --force"
                );
            }
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            if is_current {
                let _ = std::fs::remove_file(dir(g).join("current"));
            }
            eprintln!("Profile {name:?} deleted.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_words() {
        for ok in ["prod", "eu-west_1", "a.b"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "current", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_profile_reads_and_writes_as_bacalhau_s_yaml() {
        let y = "endpoint: https://api.example:1234\ndescription: prod\ntimeout: 30s\nauth:\n  token: t0k\ntls:\n  insecure: true\n";
        let p: Profile = serde_norway::from_str(y).unwrap();
        assert_eq!(p.endpoint, "https://api.example:1234");
        assert_eq!(p.auth.token, "t0k");
        assert!(p.tls.insecure);
        assert_eq!(serde_norway::to_string(&p).unwrap(), y);
        assert!(
            !format!("{p:?}").contains("t0k"),
            "Debug never shows the token"
        );
    }
}
