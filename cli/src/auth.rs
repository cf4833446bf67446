//! `auth info|hash-password` (Bacalhau v1.7+).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::ApiClient;
use crate::output::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Which credential this client would send, to which endpoint, and what the server offers.
    Info(OutputArgs),
    /// Hash a password with bcrypt (cost 12) for API.Auth.Users; reads it from the terminal
    /// (not echoed) or from stdin.
    HashPassword {
        /// bcrypt cost (4-31).
        #[arg(long, default_value_t = 12)]
        cost: u32,
    },
}

pub async fn run(c: &ApiClient, cmd: AuthCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthCommand::Info(out) => {
            let server: Option<serde_json::Value> =
                c.get("/api/v1/agent/authconfig", &[]).await.ok();
            let info = serde_json::json!({
                "Endpoint": c.base,
                "Credential": c.auth().describe(),
                "Environment": {
                    "CARAVEL_API_KEY": std::env::var_os("CARAVEL_API_KEY").is_some(),
                    "CARAVEL_API_KEY_FILE": std::env::var_os("CARAVEL_API_KEY_FILE").is_some(),
                    "CARAVEL_API_USERNAME": std::env::var_os("CARAVEL_API_USERNAME").is_some(),
                    "CARAVEL_API_PASSWORD": std::env::var_os("CARAVEL_API_PASSWORD").is_some(),
                    "BACALHAU_API_KEY": std::env::var_os("BACALHAU_API_KEY").is_some(),
                    "BACALHAU_API_USERNAME": std::env::var_os("BACALHAU_API_USERNAME").is_some(),
                    "BACALHAU_API_PASSWORD": std::env::var_os("BACALHAU_API_PASSWORD").is_some(),
                },
                "Server": server,
            });
            if !out.structured(&info)? {
                println!("Endpoint:   {}", c.base);
                println!("Credential: {}", c.auth().describe());
                match &server {
                    Some(s) => {
                        let methods = s["Methods"]
                            .as_array()
                            .map(|m| {
                                m.iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .unwrap_or_default();
                        println!("Server:     accepts {methods}");
                        if s["LoopbackOnly"].as_bool() == Some(true) {
                            println!(
                                "            serves only loopback clients (no API users configured)"
                            );
                        }
                        match s["Anonymous"].as_str() {
                            Some("read") => println!("            anonymous clients may read"),
                            Some("write") => {
                                println!("            anonymous clients may read and write")
                            }
                            _ => {}
                        }
                    }
                    None => println!("Server:     did not answer /api/v1/agent/authconfig"),
                }
            }
        }
        AuthCommand::HashPassword { cost } => {
            if !(4..=31).contains(&cost) {
                bail!("--cost must be 4-31");
            }
            let password = read_password()?;
            caravel_model::config::check_password(&password).map_err(anyhow::Error::msg)?;
            let hash = bcrypt::hash(password, cost).context("hashing failed")?;
            println!("{hash}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A password from the terminal without echo (twice, to catch typos), or one line of stdin.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let ask = |prompt: &str| -> anyhow::Result<String> {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let _echo = NoEcho::new();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        eprintln!();
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let a = ask("Password: ")?;
    let b = ask("Again: ")?;
    if a != b {
        bail!("the two passwords differ");
    }
    Ok(a)
}

/// Turns terminal echo off while alive (`stty -echo`), so a typed password is not shown.
struct NoEcho;

impl NoEcho {
    fn new() -> NoEcho {
        let _ = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        NoEcho
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
    }
}
