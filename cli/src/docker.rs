//! `docker run IMAGE [-- CMD ARGS…]`: a Docker job from the command line, with Bacalhau's flags
//! (reference §1.6). The flags shared with `wasm run` live in [`JobFlags`]; this file adds the
//! engine's own (`--entrypoint`, `-w/--workdir`; `-e/--env` goes to the task's Env) and builds the
//! `docker` engine spec:
//!
//! ```text
//! Engine: {Type: docker, Params: {Image, Entrypoint?, Parameters?, EnvironmentVariables?, WorkingDirectory?}}
//! ```

use std::process::ExitCode;

use anyhow::bail;
use caravel_model::spec::{Job, SpecConfig};
use clap::{Args, Subcommand};

use crate::ApiClient;
use crate::jobflags::{JobFlags, env_pairs, submit};

#[derive(Debug, Subcommand)]
pub enum DockerCommand {
    /// Run a container image as a job.
    #[command(long_about = RUN_ABOUT, after_help = RUN_EXAMPLES)]
    Run(DockerRunArgs),
}

const RUN_ABOUT: &str = "Run a container image as a job.

As in Bacalhau v1, the words after IMAGE are the engine's Parameters: the container's command \
(Docker's CMD), which the image's own ENTRYPOINT runs if it has one. Only --entrypoint replaces \
the ENTRYPOINT; the first word is never taken for it. Put `--` before a command that has flags \
of its own. The job's YAML is printed instead of submitted with --dry-run.";

const RUN_EXAMPLES: &str = "Examples:
  caravel docker run busybox:1.37.0 -- echo hello
  caravel docker run --entrypoint /bin/sh -e NAME=world busybox:1.37.0 -- -c 'echo hello $NAME'
  caravel docker run -i https://example.org/data.txt:/inputs/data.txt -o outputs:/outputs \\
      -p s3://my-bucket/results/{jobID}/,opt=region=eu-west-1 \\
      --cpu 500m --memory 256Mb --timeout 300 busybox:1.37.0 -- wc -w /inputs/data.txt
  caravel docker run --dry-run ubuntu:24.04 echo hello > job.yaml   # then: caravel job run job.yaml";

#[derive(Debug, Args)]
pub struct DockerRunArgs {
    /// The image: NAME, NAME:TAG or NAME@DIGEST.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The command and its arguments (the engine's Parameters); put `--` before them when they
    /// have flags.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub args: Vec<String>,
    /// Replace the image's ENTRYPOINT: repeat the flag or separate words with commas
    /// (--entrypoint /bin/sh,-c).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Working directory inside the container (an absolute path).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Environment variables KEY=VALUE for the container (repeatable; the task's Env, as
    /// Bacalhau v1.7+ puts them: upper-case names, `env:NAME` forwards a variable of the node).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    #[command(flatten)]
    pub job: JobFlags,
}

pub async fn run(c: &ApiClient, cmd: DockerCommand) -> anyhow::Result<ExitCode> {
    let DockerCommand::Run(a) = cmd;
    let job = build_job(&a)?;
    submit(c, &job, &a.job.runtime).await
}

/// The job the flags describe (not yet defaulted: [`submit`] does that with the spec parser).
pub fn build_job(a: &DockerRunArgs) -> anyhow::Result<Job> {
    let image = a.image.trim();
    if image.is_empty()
        || !image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
    {
        bail!(
            "{:?} is not an image reference; use NAME[:TAG|@DIGEST], e.g. busybox:1.37.0",
            a.image
        );
    }
    let mut engine = SpecConfig::new("docker").with("Image", image);
    if !a.entrypoint.is_empty() {
        engine = engine.with("Entrypoint", a.entrypoint.clone());
    }
    if !a.args.is_empty() {
        engine = engine.with("Parameters", a.args.clone());
    }
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            bail!("-w {w}: the working directory must be an absolute path, e.g. /work");
        }
        engine = engine.with("WorkingDirectory", w.as_str());
    }
    let mut task = a.job.task()?;
    task.engine = engine;
    task.env.extend(env_pairs(&a.env)?);
    a.job.job(task)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::{Value, json};

    use super::*;
    use crate::job::{dry_run_yaml, job_to_value, spec_to_value};
    use crate::{Cli, Command};

    fn args(words: &[&str]) -> Result<DockerRunArgs, clap::Error> {
        let argv = ["caravel", "docker", "run"].iter().chain(words);
        match Cli::try_parse_from(argv)?.command {
            Command::Docker(DockerCommand::Run(a)) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// The job the words submit, defaulted and validated as `job run` does.
    fn spec(words: &[&str]) -> Value {
        job_to_value(&build_job(&args(words).unwrap()).unwrap()).unwrap()
    }

    fn error(words: &[&str]) -> String {
        match args(words) {
            Err(e) => e.to_string(),
            Ok(a) => match build_job(&a).and_then(|j| job_to_value(&j)) {
                Err(e) => format!("{e:#}"),
                Ok(v) => panic!("{words:?} was accepted: {v}"),
            },
        }
    }

    #[test]
    fn the_image_and_the_words_after_it_make_the_docker_engine() {
        let v = spec(&["busybox:1.37.0", "--", "echo", "-n", "hi"]);
        assert_eq!(
            v["Tasks"][0]["Engine"],
            json!({"Type": "docker", "Params": {"Image": "busybox:1.37.0", "Parameters": ["echo", "-n", "hi"]}})
        );
        // Without `--` too, as Bacalhau: the first word is a parameter, never the entrypoint.
        let v = spec(&["ubuntu@sha256:abc", "sh", "-c", "ls"]);
        let p = &v["Tasks"][0]["Engine"]["Params"];
        assert_eq!(p["Parameters"], json!(["sh", "-c", "ls"]));
        assert!(p.get("Entrypoint").is_none(), "{p}");
    }

    #[test]
    fn engine_flags_fill_entrypoint_env_and_workdir() {
        let v = spec(&[
            "--entrypoint",
            "/bin/sh,-c",
            "-e",
            "GREETING=hello",
            "--env",
            "WITH_EQUALS=a=b",
            "-w",
            "/work",
            "busybox",
            "--",
            "echo $GREETING",
        ]);
        let p = &v["Tasks"][0]["Engine"]["Params"];
        assert_eq!(p["Entrypoint"], json!(["/bin/sh", "-c"]));
        assert_eq!(p["Parameters"], json!(["echo $GREETING"]));
        assert_eq!(
            v["Tasks"][0]["Env"],
            json!({"GREETING": "hello", "WITH_EQUALS": "a=b"})
        );
        assert!(p.get("EnvironmentVariables").is_none(), "{p}");
        assert_eq!(p["WorkingDirectory"], "/work");
        let repeated = spec(&["--entrypoint", "/bin/sh", "--entrypoint", "-c", "busybox"]);
        assert_eq!(
            repeated["Tasks"][0]["Engine"]["Params"]["Entrypoint"],
            json!(["/bin/sh", "-c"])
        );
    }

    #[test]
    fn task_flags_fill_resources_inputs_outputs_publisher_network_and_timeouts() {
        let v = spec(&[
            "--cpu",
            "500m",
            "--memory",
            "256Mb",
            "--disk",
            "1Gb",
            "--gpu",
            "1",
            "-i",
            "https://example.org/a.txt:/inputs/a.txt",
            "-i",
            "s3://bucket/data/,opt=region=eu-west-1",
            "-o",
            "outputs:/outputs",
            "-o",
            "logs=/logs",
            "-p",
            "s3://results/wc/{jobID}/,opt=endpoint=http://127.0.0.1:5000",
            "--network",
            "default",
            "--timeout",
            "5m",
            "--queue-timeout",
            "60",
            "--task-name",
            "count",
            "busybox",
        ]);
        let t = &v["Tasks"][0];
        assert_eq!(t["Name"], "count");
        assert_eq!(
            t["Resources"],
            json!({"CPU": "500m", "Memory": "256mb", "Disk": "1gb", "GPU": "1"})
        );
        assert_eq!(t["InputSources"][0]["Target"], "/inputs/a.txt");
        assert_eq!(t["InputSources"][0]["Source"]["Type"], "urlDownload");
        assert_eq!(
            t["InputSources"][1]["Source"]["Params"]["Region"],
            "eu-west-1"
        );
        assert_eq!(t["InputSources"][1]["Target"], "/inputs");
        assert_eq!(
            t["ResultPaths"],
            json!([{"Name": "outputs", "Path": "/outputs"}, {"Name": "logs", "Path": "/logs"}])
        );
        assert_eq!(
            t["Publisher"],
            json!({"Type": "s3", "Params": {"Bucket": "results", "Key": "wc/{jobID}/", "Endpoint": "http://127.0.0.1:5000"}})
        );
        assert_eq!(t["Network"]["Type"], "Default");
        assert_eq!(t["Timeouts"]["TotalTimeout"], 300);
        assert_eq!(t["Timeouts"]["QueueTimeout"], 60);
        assert_eq!(t["Timeouts"]["ExecutionTimeout"], 0);
    }

    #[test]
    fn job_flags_fill_name_namespace_type_count_labels_and_constraints() {
        let v = spec(&[
            "--name",
            "wc",
            "--namespace",
            "team-a",
            "--priority",
            "5",
            "--count",
            "3",
            "-l",
            "env=prod,team=data",
            "-l",
            "tier=gold",
            "-l",
            "canary",
            "--constraints",
            "region=eu,gpu!=true",
            "busybox",
        ]);
        assert_eq!(v["Name"], "wc");
        assert_eq!(v["Namespace"], "team-a");
        assert_eq!(v["Type"], "batch");
        assert_eq!(v["Priority"], 5);
        assert_eq!(v["Count"], 3);
        assert_eq!(
            v["Labels"],
            json!({"canary": "", "env": "prod", "team": "data", "tier": "gold"})
        );
        assert_eq!(
            v["Constraints"],
            json!([
                {"Key": "region", "Operator": "=", "Values": ["eu"]},
                {"Key": "gpu", "Operator": "!=", "Values": ["true"]}
            ])
        );
        let ops = spec(&["--target", "all", "-s", "zone in (a,b)", "busybox"]);
        assert_eq!(ops["Type"], "ops");
        assert_eq!(
            ops["Count"], 0,
            "ops jobs run on every node: Count is dropped"
        );
        assert_eq!(ops["Constraints"][0]["Operator"], "in");
    }

    #[test]
    fn boolean_flags_take_no_value_from_the_next_word() {
        // `--wait IMAGE`: IMAGE is the image, not the value of --wait.
        let a = args(&["--wait", "busybox", "--", "echo", "hi"]).unwrap();
        assert!(a.job.runtime.wait);
        assert_eq!(a.image, "busybox");
        assert_eq!(a.args, vec!["echo", "hi"]);
        for (word, want) in [
            ("--wait=false", false),
            ("--wait=0", false),
            ("--wait=T", true),
        ] {
            assert_eq!(
                args(&[word, "busybox"]).unwrap().job.runtime.wait,
                want,
                "{word}"
            );
        }
        let a = args(&["--id-only", "--dry-run", "busybox"]).unwrap();
        assert!(a.job.runtime.id_only && a.job.runtime.dry_run);
        assert_eq!(a.image, "busybox");
    }

    #[test]
    fn defaults_follow_bacalhau() {
        let v = spec(&["busybox"]);
        assert_eq!(v["Type"], "batch");
        assert_eq!(v["Count"], 1);
        assert_eq!(v["Namespace"], "default");
        assert_eq!(v["Tasks"][0]["Name"], "main");
        assert_eq!(v["Tasks"][0]["Publisher"]["Type"], "local");
        assert_eq!(v["Tasks"][0]["Network"]["Type"], "None");
        let a = args(&["busybox"]).unwrap();
        let rt = &a.job.runtime;
        assert!(rt.wait && !rt.follow && !rt.id_only && !rt.dry_run);
        let a = args(&["--wait=false", "--id-only", "-f", "--dry-run", "busybox"]).unwrap();
        let rt = &a.job.runtime;
        assert!(!rt.wait && rt.follow && rt.id_only && rt.dry_run);
    }

    #[test]
    fn dry_run_output_is_a_spec_job_run_accepts_unchanged() {
        let v = spec(&[
            "--name",
            "round-trip",
            "--cpu",
            "1",
            "--memory",
            "64Mb",
            "-e",
            "A=1",
            "--network",
            "full",
            "--timeout",
            "30",
            "-o",
            "outputs:/outputs",
            "-p",
            "s3://b/k/,opt=encoding=plain",
            "--entrypoint",
            "/bin/sh",
            "busybox",
            "--",
            "-c",
            "echo 'quoted: yes' > /outputs/x",
        ]);
        let yaml = dry_run_yaml(&v).unwrap();
        let back = spec_to_value(yaml.as_bytes(), std::path::Path::new(".")).unwrap();
        assert_eq!(back, v, "{yaml}");
    }

    #[test]
    fn bad_flags_say_what_is_wrong_and_what_to_write() {
        for (words, want) in [
            (&["--memory", "12XB", "busybox"][..], "--memory 12XB"),
            (&["--memory", "lots", "busybox"][..], "512Mb"),
            (&["--cpu", "two", "busybox"][..], "millicores"),
            (&["--disk=-1Gb", "busybox"][..], "--disk -1Gb"),
            (&["--gpu", "1.5", "busybox"][..], "not a GPU count"),
            (&["-o", "outputs", "busybox"][..], "name:/path"),
            (&["-o", "outputs:relative", "busybox"][..], "absolute path"),
            (&["-o", ":/outputs", "busybox"][..], "plain name"),
            (
                &["--network", "http", "busybox"][..],
                "--network http needs at least one --domain",
            ),
            (
                &["--domain", "example.org", "busybox"][..],
                "only for --network http",
            ),
            (
                &[
                    "--network",
                    "http",
                    "--domain",
                    "https://example.org/",
                    "busybox",
                ][..],
                "not a host name",
            ),
            (
                &["--network", "pigeon", "busybox"][..],
                "unknown network type",
            ),
            (&["--target", "some", "busybox"][..], "any"),
            (&["-e", "NOVALUE", "busybox"][..], "KEY=VALUE"),
            (&["-e", "BACALHAU_JOB_ID=x", "busybox"][..], "reserved"),
            (
                &["--timeout", "10", "--queue-timeout", "20", "busybox"][..],
                "raise --timeout or lower --queue-timeout",
            ),
            (&["--timeout=-5", "busybox"][..], "--timeout"),
            (
                &["--constraints", "zone in a", "busybox"][..],
                "parentheses",
            ),
            (&["-l", "=novalue", "busybox"][..], "the label has no key"),
            (
                &["--network", "http", "--domain", "example.org", "busybox"][..],
                "HTTP (outbound HTTP to listed Domains only) is not supported",
            ),
            (&["--timeout", "soon", "busybox"][..], "not a duration"),
            (&["-w", "relative", "busybox"][..], "absolute path"),
            (&["-p", "ftp://x", "busybox"][..], "unknown publisher"),
            (
                &["-i", "git://example.org/repo", "busybox"][..],
                "git inputs",
            ),
            (&["bad image"][..], "not an image reference"),
            (&[][..], "IMAGE"),
        ] {
            let e = error(words);
            assert!(e.contains(want), "{words:?}: {e:?} should contain {want:?}");
        }
    }
}
