//! Decoders of untrusted bytes never panic: the binary codec (Raft log, snapshots, wire), the job
//! spec parser (API bodies, CLI files) and the config parser; the fuzz targets of the last two
//! (compiled from `model/fuzz/src/lib.rs`) run over their seeds and the committed corpus.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

use caravel_model::codec;
use caravel_model::command::Command;
use caravel_model::parse::{Mode, parse_job};
use caravel_model::state::ClusterState;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_codec_rejects_garbage_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Command>(&bytes);
        let _ = codec::decode::<ToCompute>(&bytes);
        let _ = codec::decode::<ToOrchestrator>(&bytes);
        let _ = ClusterState::from_snapshot(&bytes);
    }

    #[test]
    fn the_codec_rejects_corrupted_commands_without_panicking(flip in 0usize..64, bit in 0u8..8) {
        let c = Command::StopJob { job_id: "j-1234".into(), reason: "because".into(), evaluation_id: "ev".into(), now: 42 };
        let mut b = codec::encode(&c).unwrap();
        let i = flip % b.len();
        b[i] ^= 1 << bit;
        let _ = codec::decode::<Command>(&b);
    }

    #[test]
    fn the_spec_parser_rejects_garbage_without_panicking(text in "\\PC{0,300}") {
        let _ = parse_job(text.as_bytes(), Mode::Server);
    }

    #[test]
    fn the_spec_parser_survives_arbitrary_yaml_shapes(key in "[A-Za-z]{1,12}", val in "[ -~]{0,20}") {
        let spec = format!("Name: x\nTasks:\n  - Name: main\n    {key}: {val:?}\n    Engine: {{Type: wasm, Params: {{{key}: {val:?}}}}}\n");
        let _ = parse_job(spec.as_bytes(), Mode::Client);
    }
}

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 2] = [("job_spec", targets::job_spec), ("config", targets::config)];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Shapes the examples do not reach: every input source type, publishers, constraints, timeouts,
/// the legacy WASM form, lower-case keys, a JSON body as Bacalhau's Go client sends it.
const SPEC_SEEDS: &[(&str, &str)] = &[
    (
        "docker-s3",
        "Name: s3\nType: batch\nCount: 1\nTasks:\n  - Name: main\n    Engine: {Type: docker, Params: {Image: busybox:1.37.0, Entrypoint: [/bin/sh], Parameters: [-c, ls /in], EnvironmentVariables: [A=1], WorkingDirectory: /}}\n    InputSources:\n      - {Alias: in, Target: /in, Source: {Type: s3, Params: {Bucket: b, Key: some/prefix/, Region: eu-west-1, Endpoint: 'http://127.0.0.1:9000'}}}\n      - {Target: /u, Source: {Type: urlDownload, Params: {URL: 'http://127.0.0.1:8000/x'}}}\n      - {Target: /l, Source: {Type: localDirectory, Params: {SourcePath: /data, ReadWrite: false}}}\n    Publisher: {Type: s3, Params: {Bucket: out, Key: 'r/{jobID}', Region: us-east-1}}\n    ResultPaths: [{Name: out, Path: /outputs}]\n    Resources: {CPU: 500m, Memory: 512Mb, Disk: 1GB, GPU: '0'}\n    Network: {Type: None}\n    Timeouts: {ExecutionTimeout: 300, QueueTimeout: 3600, TotalTimeout: 7200}\n",
    ),
    (
        "daemon-constraints",
        "Name: d\nType: daemon\nPriority: 50\nLabels: {team: data}\nMeta: {a: b}\nConstraints: [{Key: region, Operator: '=', Values: [eu]}, {Key: zone, Operator: in, Values: [a, b]}]\nTasks:\n  - Name: main\n    Env: {API_KEY: 'env:API_KEY'}\n    Engine: {Type: docker, Params: {Image: busybox:1.37.0, Parameters: [sleep, '900']}}\n",
    ),
    (
        "legacy-wasm",
        "Name: legacy\nType: batch\nTasks:\n  - Name: main\n    Engine:\n      Type: wasm\n      Params:\n        EntryPoint: run\n        EntryModule:\n          Source: {Type: urlDownload, Params: {URL: 'http://127.0.0.1:8000/main.wasm'}}\n          Target: /app/main.wasm\n",
    ),
    (
        "lowercase",
        "name: lower\ntype: ops\ntasks:\n  - name: main\n    engine: {type: wasm, params: {entryModule: /m.wasm, parameters: [a]}}\n    inputSources:\n      - target: /m.wasm\n        source: {type: inline, params: {url: 'data:,x'}}\n    resources: {cpu: '1', memory: 2GiB}\n",
    ),
    (
        "go-client-json",
        r#"{"Name":"go","Namespace":"default","Type":"batch","Priority":0,"Count":1,"Tasks":[{"Name":"main","Engine":{"Type":"docker","Params":{"Image":"busybox:1.37.0","Entrypoint":["echo"],"Parameters":["hi"]}},"Publisher":{"Type":"noop"},"Resources":{"CPU":"0.1","Memory":"64mb"},"Network":{"Type":"None"},"Timeouts":{"ExecutionTimeout":60}}],"State":{"StateType":"Undefined"},"Version":0,"CreateTime":0}"#,
    ),
];

const CONFIG_SEEDS: &[(&str, &str)] = &[
    ("assign-port", "API.Port=1235"),
    ("assign-anonymous", "API.Auth.AllowAnonymous=read"),
    ("assign-token", "Compute.Auth.Token=a-join-token-0123456789"),
    ("assign-list", "Compute.Admission.Networks=[None, Host]"),
    (
        "assign-bool",
        "JobAdmissionControl.RejectStatelessJobs=true",
    ),
    (
        "users",
        "API:\n  Host: 0.0.0.0\n  Auth:\n    Users:\n      - {Alias: admin, Username: root, Password: correct-horse-battery-staple, Capabilities: [{Actions: ['*']}]}\n      - {Alias: dash, APIKey: dash-key-0123456789abcdef, Capabilities: [{Actions: ['read:*']}]}\n",
    ),
];

/// Seeds per target: every spec and config the repository ships, and the shapes above.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let yaml_in = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        v.sort();
        v
    };
    for p in yaml_in(&repo().join("examples")) {
        let name = format!("example-{}", p.file_stem().unwrap().to_string_lossy());
        out.push(("job_spec", name, std::fs::read(&p).unwrap()));
    }
    for (name, text) in SPEC_SEEDS {
        out.push(("job_spec", format!("seed-{name}"), text.as_bytes().to_vec()));
    }
    for dir in ["deploy/config", "deploy/compose/config"] {
        for p in yaml_in(&repo().join(dir)) {
            let name = format!(
                "{}-{}",
                dir.replace('/', "-"),
                p.file_stem().unwrap().to_string_lossy()
            );
            out.push(("config", name, std::fs::read(&p).unwrap()));
        }
    }
    for (name, text) in CONFIG_SEEDS {
        out.push(("config", format!("seed-{name}"), text.as_bytes().to_vec()));
    }
    out
}

#[test]
fn every_seed_passes_its_target_and_the_valid_ones_are_accepted() {
    let seeds = seeds();
    for (name, file, input) in &seeds {
        let run = TARGETS.iter().find(|(n, _)| n == name).unwrap().1;
        let outcome = std::panic::catch_unwind(|| run(input));
        assert!(outcome.is_ok(), "{name} fails on its seed {file}");
    }
    // The seeds are meaningful: they reach past the decoders into the checks of accepted input (the
    // examples are CLI files, whose relative paths the CLI resolves first).
    for (name, file, input) in seeds.iter().filter(|(_, f, _)| !f.starts_with("example-")) {
        let accepted = match *name {
            "job_spec" => parse_job(input, Mode::Server)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => {
                let text = std::str::from_utf8(input).unwrap();
                let mut doc = serde_json::json!({});
                match text.split_once('=').filter(|(k, _)| !k.contains('\n')) {
                    Some((k, v)) => {
                        caravel_model::config::set_in(&mut doc, k, v).map_err(|e| e.to_string())
                    }
                    None => serde_norway::from_str(text)
                        .map(|d| doc = d)
                        .map_err(|e| e.to_string()),
                }
                .and_then(|()| {
                    caravel_model::config::Config::from_value(doc)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }
        };
        assert!(
            accepted.is_ok(),
            "the {name} seed {file} is refused: {}",
            accepted.unwrap_err()
        );
    }
    // CARAVEL_FUZZ_SEEDS_OUT=model/fuzz/corpus writes the seeds where `cargo fuzz run` starts from.
    if let Some(dir) = std::env::var_os("CARAVEL_FUZZ_SEEDS_OUT") {
        for (name, file, input) in &seeds {
            let d = PathBuf::from(&dir).join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), input).unwrap();
        }
    }
}

#[test]
fn the_committed_fuzz_corpus_passes_every_target() {
    for (name, run) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "the fuzz corpus {} is missing ({e}); it is committed with the repository",
                dir.display()
            )
        });
        let mut inputs = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            // A panic names the input, so it can be replayed with `cargo fuzz run NAME PATH`.
            let outcome = std::panic::catch_unwind(|| run(&input));
            assert!(outcome.is_ok(), "{name} fails on {}", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "the fuzz corpus {} is empty", dir.display());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Arbitrary bytes, and arbitrary `Key=Value` assignments of real keys, pass the targets.
    #[test]
    fn arbitrary_input_passes_the_fuzz_targets(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        targets::job_spec(&data);
        targets::config(&data);
    }

    #[test]
    fn arbitrary_values_of_every_config_key_pass_the_config_target(
        key in proptest::sample::select(caravel_model::config::KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
        raw in "[ -~]{0,40}",
    ) {
        targets::config(format!("{key}={raw}").as_bytes());
    }
}
