//! `caravel-udp-proxy`: a fault-injecting UDP proxy for cutting and degrading QUIC links by hand
//! or from a test that runs it as a process.
//!
//! ```text
//! caravel-udp-proxy --listen 127.0.0.1:7000 --upstream 127.0.0.1:7001 --loss 0.2 --delay-ms 200
//! ```
//!
//! On start it prints one JSON line on stdout with the address it listens on. Then it reads
//! control commands from stdin, one a line, and answers each with exactly one JSON line on stdout
//! (`{"ok":true,"faults":{…}}`, the counters for `stats`, or `{"error":…,"hint":…}`); send `help`
//! for the list. Log lines go to stderr. It runs until SIGINT/SIGTERM or `quit`; end of input
//! does not stop it, so it can run with stdin closed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use caravel_chaos_tests::proxy::{Direction, Faults, LinkFaults, Proxy};
use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// A fault-injecting UDP proxy: forwards datagrams between clients and one upstream, losing,
/// delaying, duplicating, reordering, throttling or dropping them on request.
#[derive(Debug, Parser)]
#[command(name = "caravel-udp-proxy", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the first stdout line says which).
    #[arg(long)]
    listen: SocketAddr,
    /// Where to forward to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Probability of dropping a datagram, both directions.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Delay of every datagram, milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Random delay variation, plus or minus, milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability of sending a datagram twice.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Probability of holding a datagram back until after the next.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Bandwidth cap in bytes per second, each direction.
    #[arg(long)]
    bandwidth_bps: Option<u64>,
    /// Start with the link cut.
    #[arg(long)]
    blackhole: bool,
    /// Seed for the random decisions, to repeat a run.
    #[arg(long)]
    seed: Option<u64>,
}

impl Args {
    fn faults(&self) -> Faults {
        Faults {
            blackhole: self.blackhole,
            seed: self.seed,
            ..Faults::both(LinkFaults {
                loss: self.loss,
                delay: Duration::from_millis(self.delay_ms),
                jitter: Duration::from_millis(self.jitter_ms),
                duplicate: self.dup,
                reorder: self.reorder,
                bandwidth: self.bandwidth_bps,
            })
        }
    }
}

const HELP: &str = "commands: loss P [up|down|both] | delay MS [JITTER_MS] [up|down|both] | \
dup P [dir] | reorder P [dir] | bandwidth BYTES_PER_SEC|off [dir] | blackhole on|off | heal | \
seed N|off | faults | stats | help | quit";

/// One control command.
#[derive(Clone, Debug, PartialEq)]
enum Command {
    Loss(f64, Vec<Direction>),
    Delay(Duration, Duration, Vec<Direction>),
    Dup(f64, Vec<Direction>),
    Reorder(f64, Vec<Direction>),
    Bandwidth(Option<u64>, Vec<Direction>),
    Blackhole(bool),
    Heal,
    Seed(Option<u64>),
    Faults,
    Stats,
    Help,
    Quit,
}

#[derive(Debug, thiserror::Error, PartialEq)]
enum ParseError {
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("{command}: {what}")]
    Argument { command: &'static str, what: String },
}

fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else {
        return Ok(None);
    };
    fn bad(command: &'static str, what: impl Into<String>) -> ParseError {
        ParseError::Argument {
            command,
            what: what.into(),
        }
    }
    fn probability(command: &'static str, s: Option<&&str>) -> Result<f64, ParseError> {
        let s = s.ok_or_else(|| bad(command, "missing probability"))?;
        let p: f64 = s
            .parse()
            .map_err(|_| bad(command, format!("{s:?} is not a number")))?;
        if (0.0..=1.0).contains(&p) {
            Ok(p)
        } else {
            Err(bad(command, format!("{p} is not between 0 and 1")))
        }
    }
    fn millis(command: &'static str, s: &str) -> Result<Duration, ParseError> {
        s.parse().map(Duration::from_millis).map_err(|_| {
            bad(
                command,
                format!("{s:?} is not a whole number of milliseconds"),
            )
        })
    }
    /// Directions named by the optional last word; both when absent.
    fn dirs(command: &'static str, rest: &[&str]) -> Result<Vec<Direction>, ParseError> {
        match rest {
            [] | ["both"] => Ok(vec![Direction::ToUpstream, Direction::ToClient]),
            ["up"] => Ok(vec![Direction::ToUpstream]),
            ["down"] => Ok(vec![Direction::ToClient]),
            other => Err(bad(
                command,
                format!("expected up, down or both, not {:?}", other.join(" ")),
            )),
        }
    }
    let command = match name {
        "loss" => Command::Loss(
            probability("loss", args.first())?,
            dirs("loss", &args[1..])?,
        ),
        "dup" => Command::Dup(probability("dup", args.first())?, dirs("dup", &args[1..])?),
        "reorder" => Command::Reorder(
            probability("reorder", args.first())?,
            dirs("reorder", &args[1..])?,
        ),
        "delay" => {
            let Some(delay) = args.first() else {
                return Err(bad("delay", "missing milliseconds"));
            };
            let delay = millis("delay", delay)?;
            // The second word is the jitter if it is a number.
            match args.get(1).map(|s| millis("delay", s)) {
                Some(Ok(jitter)) => Command::Delay(delay, jitter, dirs("delay", &args[2..])?),
                _ => Command::Delay(delay, Duration::ZERO, dirs("delay", &args[1..])?),
            }
        }
        "bandwidth" => {
            let rate = match args.first() {
                Some(&"off") => None,
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| bad("bandwidth", format!("{s:?} is not bytes per second")))?,
                ),
                None => return Err(bad("bandwidth", "missing bytes per second or off")),
            };
            Command::Bandwidth(rate, dirs("bandwidth", &args[1..])?)
        }
        "blackhole" => match args {
            ["on"] => Command::Blackhole(true),
            ["off"] => Command::Blackhole(false),
            _ => return Err(bad("blackhole", "expected on or off")),
        },
        "seed" => match args {
            ["off"] => Command::Seed(None),
            [n] => Command::Seed(Some(
                n.parse()
                    .map_err(|_| bad("seed", format!("{n:?} is not a whole number")))?,
            )),
            _ => return Err(bad("seed", "expected a number or off")),
        },
        "heal" => Command::Heal,
        "faults" => Command::Faults,
        "stats" => Command::Stats,
        "help" => Command::Help,
        "quit" | "exit" => Command::Quit,
        other => return Err(ParseError::Unknown(other.to_string())),
    };
    Ok(Some(command))
}

/// Applies a fault-changing command to `faults`; `false` for commands that change nothing.
fn apply(command: &Command, faults: &mut Faults) -> bool {
    let mut each = |dirs: &[Direction], change: &dyn Fn(&mut LinkFaults)| {
        for d in dirs {
            change(faults.link_mut(*d));
        }
    };
    match command {
        Command::Loss(p, d) => each(d, &|l| l.loss = *p),
        Command::Dup(p, d) => each(d, &|l| l.duplicate = *p),
        Command::Reorder(p, d) => each(d, &|l| l.reorder = *p),
        Command::Delay(delay, jitter, d) => each(d, &|l| {
            l.delay = *delay;
            l.jitter = *jitter;
        }),
        Command::Bandwidth(rate, d) => each(d, &|l| l.bandwidth = *rate),
        Command::Blackhole(on) => faults.blackhole = *on,
        Command::Heal => {
            *faults = Faults {
                seed: faults.seed,
                ..Faults::none()
            }
        }
        Command::Seed(seed) => faults.seed = *seed,
        Command::Faults | Command::Stats | Command::Help | Command::Quit => return false,
    }
    true
}

/// Serves control commands from `input` until it ends or says `quit` (returns `true` for quit).
async fn control<R, W>(proxy: &Proxy, input: R, mut output: W) -> anyhow::Result<bool>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = input.lines();
    while let Some(line) = lines.next_line().await? {
        let (reply, quit) = match parse(&line) {
            Ok(None) => continue,
            Ok(Some(Command::Stats)) => (serde_json::to_value(proxy.stats())?, false),
            Ok(Some(Command::Help)) => (json!({ "help": HELP }), false),
            Ok(Some(Command::Quit)) => (json!({ "ok": true }), true),
            Ok(Some(command)) => {
                let mut faults = proxy.faults();
                apply(&command, &mut faults);
                match proxy.set(faults) {
                    Ok(()) => (json!({ "ok": true, "faults": proxy.faults() }), false),
                    Err(e) => (json!({ "error": e.to_string(), "hint": HELP }), false),
                }
            }
            Err(e) => (json!({ "error": e.to_string(), "hint": HELP }), false),
        };
        output.write_all(format!("{reply}\n").as_bytes()).await?;
        output.flush().await?;
        if quit {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn terminated() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let proxy = Proxy::start_with(args.listen, args.upstream, args.faults())
        .await
        .with_context(|| {
            format!(
                "cannot start the proxy on {}; pick a free address or port 0",
                args.listen
            )
        })?;
    println!(
        "{}",
        json!({ "listening": proxy.local_addr(), "upstream": proxy.upstream(), "faults": proxy.faults() })
    );
    eprintln!(
        "caravel-udp-proxy: {} -> {}; type `help` for commands",
        proxy.local_addr(),
        proxy.upstream()
    );
    let stdin = BufReader::new(tokio::io::stdin());
    tokio::select! {
        r = control(&proxy, stdin, tokio::io::stdout()) => {
            // End of input alone does not stop the proxy; only `quit` does.
            if !r? {
                terminated().await?;
            }
        }
        r = terminated() => r?,
    }
    proxy.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Direction; 2] = [Direction::ToUpstream, Direction::ToClient];

    #[test]
    fn commands_parse_with_optional_directions() {
        assert_eq!(
            parse("loss 0.2").unwrap(),
            Some(Command::Loss(0.2, BOTH.to_vec()))
        );
        assert_eq!(
            parse("loss 0.5 up").unwrap(),
            Some(Command::Loss(0.5, vec![Direction::ToUpstream]))
        );
        assert_eq!(
            parse("delay 200 50").unwrap(),
            Some(Command::Delay(
                Duration::from_millis(200),
                Duration::from_millis(50),
                BOTH.to_vec()
            ))
        );
        assert_eq!(
            parse("delay 200 down").unwrap(),
            Some(Command::Delay(
                Duration::from_millis(200),
                Duration::ZERO,
                vec![Direction::ToClient]
            ))
        );
        assert_eq!(
            parse("bandwidth off").unwrap(),
            Some(Command::Bandwidth(None, BOTH.to_vec()))
        );
        assert_eq!(
            parse("blackhole on").unwrap(),
            Some(Command::Blackhole(true))
        );
        assert_eq!(parse("  ").unwrap(), None);
    }

    #[test]
    fn bad_commands_say_what_was_wrong() {
        assert_eq!(
            parse("jump").unwrap_err(),
            ParseError::Unknown("jump".into())
        );
        assert!(
            parse("loss 2")
                .unwrap_err()
                .to_string()
                .contains("between 0 and 1")
        );
        assert!(parse("loss 0.1 sideways").is_err());
        assert!(parse("blackhole maybe").is_err());
    }

    #[test]
    fn heal_turns_every_fault_off_but_keeps_the_seed() {
        let mut faults = Faults {
            blackhole: true,
            seed: Some(9),
            ..Faults::both(LinkFaults::loss(0.3))
        };
        apply(&Command::Heal, &mut faults);
        assert_eq!(faults, Faults::none().with_seed(9));
    }

    #[tokio::test]
    async fn the_control_channel_changes_faults_and_answers_each_line_in_json() {
        let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy::start(
            "127.0.0.1:0".parse().unwrap(),
            upstream.local_addr().unwrap(),
        )
        .await
        .unwrap();
        let input = b"loss 0.2\n\nblackhole on\nnonsense\nstats\nheal\nquit\nloss 0.9\n";
        let mut out = Vec::new();
        let quit = control(&proxy, &input[..], &mut out).await.unwrap();
        assert!(quit);
        let replies: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replies.len(), 6, "{replies:?}");
        assert_eq!(replies[0]["faults"]["to_upstream"]["loss"], 0.2);
        assert_eq!(replies[1]["faults"]["blackhole"], true);
        assert!(replies[2]["error"].as_str().unwrap().contains("nonsense"));
        assert_eq!(replies[3]["to_upstream"]["forwarded"], 0);
        assert_eq!(replies[4]["faults"]["blackhole"], false);
        assert_eq!(replies[4]["faults"]["to_client"]["loss"], 0.0);
        // Nothing after `quit` was applied.
        assert_eq!(proxy.faults(), Faults::none());
    }
}
